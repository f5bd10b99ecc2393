using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Runtime.InteropServices;
using System.Threading;
using ResNetCifar.Data;
using ResNetCifar.Training;

namespace ResNetCifar.Study;

/// <summary>The images a study trains on, evaluates on after every epoch, and re-estimates precise BN over.</summary>
internal sealed record StudyData(ImageDataset Train, ImageDataset Evaluation, ImageDataset PreciseBatchNorm);

/// <summary>
/// Runs a plan of study runs, <c>jobs</c> at a time, each on one libtorch thread: on a 2-core machine two
/// single-threaded runs train about 1.45× faster together than one run on both cores, since a ResNet-8 step's
/// small convolutions leave a second thread waiting. Every finished run is written at once (see
/// <see cref="StudyCsv"/>); a restart with the same folder runs only what is missing.
/// </summary>
internal static class BatchSizeStudy
{
    public static List<StudyResult> Run(IReadOnlyList<StudyRun> plan, StudyData data, StudyProtocol protocol, string outputDirectory, string name, int jobs, Action<string> log)
    {
        Directory.CreateDirectory(outputDirectory);
        var runsPath = Path.Combine(outputDirectory, name + ".csv");
        var epochsPath = Path.Combine(outputDirectory, name + "-epochs.csv");
        CheckProtocol(Path.Combine(outputDirectory, name + "-protocol.txt"), protocol);

        var planned = plan.Select(p => p.Key).ToHashSet();
        var results = StudyCsv.Read(runsPath, epochsPath);
        var finished = results.Select(r => r.Key).ToHashSet();
        var pending = plan.Where(r => !finished.Contains(r.Key)).ToList();
        log(string.Create(CultureInfo.InvariantCulture,
            $"{name}: {plan.Count - pending.Count} of {plan.Count} runs already in {runsPath}; {pending.Count} to run, {jobs} at a time"));

        var gate = new object();
        var next = -1;
        var clock = Stopwatch.StartNew();
        var secondsThisSession = new List<double>();
        Exception? failure = null;

        void Worker()
        {
            while (true)
            {
                var index = Interlocked.Increment(ref next);
                lock (gate)
                {
                    if (failure is not null || index >= pending.Count) return;
                }
                var run = pending[index];
                var position = plan.Count - pending.Count + index + 1;
                try
                {
                    log(string.Create(CultureInfo.InvariantCulture, $"{name}: run {position} of {plan.Count} starts: {run}, batch {run.TotalBatch}, lr {run.Settings.LearningRate:G3}"));
                    var result = Execute(run, data, protocol, text => log($"  [{run}] {text}"));
                    lock (gate)
                    {
                        results.Add(result);
                        secondsThisSession.Add(result.Seconds);
                        StudyCsv.Write(runsPath, epochsPath, results);
                        var done = results.Count(r => planned.Contains(r.Key));
                        log(string.Create(CultureInfo.InvariantCulture,
                            $"{name}: run {position} of {plan.Count} done: {run}: test accuracy {result.TestAccuracy:P2}{(double.IsNaN(result.PreciseBatchNormAccuracy) ? "" : $" (precise BN {result.PreciseBatchNormAccuracy:P2})")}, {result.Seconds:F0} s; {done} of {plan.Count} finished; {Eta(plan.Count - done, secondsThisSession, jobs)}"));
                    }
                }
                catch (Exception e) when (e is ArgumentException or InvalidOperationException or IOException or ExternalException)
                {
                    lock (gate) failure ??= e;
                    return;
                }
            }
        }

        var threads = Enumerable.Range(0, Math.Max(1, Math.Min(jobs, pending.Count))).Select(_ => new Thread(Worker)).ToList();
        foreach (var t in threads) t.Start();
        foreach (var t in threads) t.Join();
        if (failure is not null)
            throw new InvalidOperationException($"{name} stopped after a failed run ({failure.Message}); the finished runs are in {runsPath}, and a restart with the same --out runs the rest.", failure);
        log(string.Create(CultureInfo.InvariantCulture, $"{name}: all {plan.Count} runs finished ({clock.Elapsed.TotalMinutes:F1} min in this session)"));
        return results.Where(r => planned.Contains(r.Key)).ToList();
    }

    /// <summary>Trains one run and measures what the study reports of it.</summary>
    public static StudyResult Execute(StudyRun run, StudyData data, StudyProtocol protocol, Action<string> log)
    {
        var settings = run.Settings;
        var device = Trainer.ResolveDevice(settings.Device);
        using var model = Trainer.CreateModel(settings, data.Train.Channels, device, log);
        using var optimizer = Trainer.CreateOptimizer(model, settings);
        var result = Trainer.Run(settings, model, optimizer, data.Train, data.Evaluation, device, new LineDisplay(log));
        var precise = double.NaN;
        if (run.IsBatchNorm && PreciseBatchNorm.Recalibrate(model, data.PreciseBatchNorm, protocol.PreciseBatchNormImages, device))
            precise = Trainer.Evaluate(model, data.Evaluation, device, settings.EvalBatchSize, settings.ChannelsLast).Accuracy;
        var last = result.Epochs[^1];
        var steps = result.Epochs.Sum(e => e.Images) / settings.BatchSize;
        return new StudyResult(run.View, run.Norm, run.StatsBatch, run.Workers, run.TotalBatch, run.Seed, settings.LearningRate, settings.Epochs, steps,
            result.FinalTestAccuracy, result.FinalTestLoss, last.TrainAccuracy, precise, result.Seconds, result.Epochs);
    }

    private static string Eta(int remaining, List<double> seconds, int jobs)
    {
        if (remaining == 0) return "none left";
        if (seconds.Count == 0) return "ETA after the first run";
        var left = TimeSpan.FromSeconds(seconds.Average() * remaining / Math.Max(1, jobs));
        return string.Create(CultureInfo.InvariantCulture, $"ETA {(int)left.TotalHours} h {left.Minutes:D2} min (about {DateTime.Now + left:HH:mm})");
    }

    private static void CheckProtocol(string path, StudyProtocol protocol)
    {
        var signature = protocol.Signature();
        if (File.Exists(path))
        {
            var existing = File.ReadAllText(path).Trim();
            if (existing != signature)
                throw new InvalidOperationException($"{path} records another protocol ({existing}); this run's is {signature}. Use another --out folder, or delete that one.");
            return;
        }
        File.WriteAllText(path, signature + Environment.NewLine);
    }

    /// <summary>Epoch summaries as log lines; no per-step progress (several runs share the console).</summary>
    private sealed class LineDisplay(Action<string> log) : IProgressDisplay
    {
        public void RunEpoch(string title, long totalSteps, Action<Action<StepProgress>> loop) => loop(_ => { });

        public void WriteLine(string text) => log(text);
    }
}
