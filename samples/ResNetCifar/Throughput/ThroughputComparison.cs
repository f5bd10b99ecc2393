using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.Linq;
using ResNetCifar.Data;
using ResNetCifar.Models;
using ResNetCifar.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace ResNetCifar.Throughput;

/// <summary>
/// Training throughput of the same network with TorchSharp's nn.GroupNorm, with our GroupNorm as a plain
/// drop-in (norm, then ReLU and the residual add as separate ops), and with our fused blocks (GroupNorm+ReLU
/// and GroupNorm+add+ReLU as single layers), in one process on the same batches. The three take turns in
/// short rounds, each round in another order, so that drifting machine load falls on all alike; speeds and
/// ratios are medians over the rounds.
/// </summary>
internal static class ThroughputComparison
{
    /// <summary>One network's median images per second and minor page faults per step (null where not measurable).</summary>
    public sealed record Contestant(string Name, double ImagesPerSecond, double? FaultsPerStep, double RatioToBuiltin);

    /// <summary>The built-in first, then ours plain and ours fused (and the no-norm bound when asked for).</summary>
    public sealed record Result(IReadOnlyList<Contestant> Contestants);

    /// <summary>
    /// The networks take turns for <paramref name="rounds"/> rounds of <paramref name="stepsPerRound"/> steps
    /// on <paramref name="train"/>'s batches. With <paramref name="bound"/>, a network with no norm at all
    /// trains too: the time a step spends outside the norms, so the most any GroupNorm could gain over the
    /// built-in.
    /// </summary>
    public static Result Run(TrainSettings settings, ImageDataset train, int rounds, int stepsPerRound, IProgressDisplay display, bool bound = false)
    {
        var device = Trainer.ResolveDevice(settings.Device);
        var entries = new List<(string Name, TrainSettings Settings)>
        {
            ("built-in", settings with { Norm = NormKind.GnBuiltin }),
            ("ours plain", settings with { Norm = NormKind.Gn, FuseBlocks = false }),
            ("ours fused", settings with { Norm = NormKind.Gn, FuseBlocks = true }),
        };
        if (bound) entries.Add(("no norm (bound)", settings with { Norm = NormKind.None }));
        var models = new List<(nn.Module<Tensor, Tensor> Model, optim.Optimizer Optimizer)>();
        try
        {
            foreach (var (_, s) in entries)
            {
                torch.manual_seed(settings.Seed);
                var model = ModelFactory.Create(s.Model, s.Depth, train.Channels, 10, s.CreateNormFactory(), display.WriteLine);
                model.to(device);
                MemoryFormat.ConvertWeights(model, settings.ChannelsLast);
                models.Add((model, Trainer.CreateOptimizer(model, s)));
            }
            return Measure(entries.Select(e => e.Name).ToArray(), models, settings, train, device, rounds, stepsPerRound, display);
        }
        finally
        {
            foreach (var (model, optimizer) in models)
            {
                optimizer.Dispose();
                model.Dispose();
            }
        }
    }

    private static Result Measure(string[] names, List<(nn.Module<Tensor, Tensor> Model, optim.Optimizer Optimizer)> models, TrainSettings settings,
        ImageDataset train, Device device, int rounds, int stepsPerRound, IProgressDisplay display)
    {
        int n = models.Count;
        var batchSize = settings.BatchSize;
        var batchesAvailable = train.Count / batchSize;
        var channelsLast = settings.ChannelsLast;
        // Warm-up: first calls allocate and pick kernels.
        foreach (var (model, optimizer) in models) TimeSteps(model, optimizer, train, device, batchSize, 0, 3, batchesAvailable, channelsLast);

        bool measurable = PageFaults.MinorFaults() is not null;
        var speeds = Enumerable.Range(0, n).Select(_ => new List<double>()).ToArray();
        var faults = Enumerable.Range(0, n).Select(_ => new List<double>()).ToArray();
        var ratios = Enumerable.Range(0, n).Select(_ => new List<double>()).ToArray();
        var images = (double)stepsPerRound * batchSize;
        for (var round = 0; round < rounds; round++)
        {
            var firstBatch = (long)round * stepsPerRound;
            // Every network takes every position, in both directions, so none always inherits one other's heap.
            bool backwards = round / n % 2 == 1;
            var seconds = new double[n];
            for (int k = 0; k < n; k++)
            {
                int i = (round + (backwards ? n - k : k)) % n;
                var (s, f) = TimeSteps(models[i].Model, models[i].Optimizer, train, device, batchSize, firstBatch, stepsPerRound, batchesAvailable, channelsLast);
                seconds[i] = s;
                speeds[i].Add(images / s);
                faults[i].Add((double)f / stepsPerRound);
            }
            for (int i = 0; i < n; i++) ratios[i].Add(seconds[0] / seconds[i]);
            display.WriteLine($"round {round + 1}/{rounds}: " + string.Join(", ", Enumerable.Range(0, n).Select(i =>
                string.Create(CultureInfo.InvariantCulture, $"{names[i]} {speeds[i][^1]:F0} img/s{(measurable ? $" ({faults[i][^1]:F0} faults/step)" : "")}"))));
        }
        var contestants = Enumerable.Range(0, n)
            .Select(i => new Contestant(names[i], Median(speeds[i]), measurable ? Median(faults[i]) : null, Median(ratios[i])))
            .ToList();
        return new Result(contestants);
    }

    private static (double Seconds, long Faults) TimeSteps(nn.Module<Tensor, Tensor> model, optim.Optimizer optimizer, ImageDataset train, Device device, int batchSize, long firstBatch, int steps, long batchesAvailable, bool channelsLast)
    {
        model.train();
        var faultsBefore = PageFaults.MinorFaults() ?? 0;
        var clock = Stopwatch.StartNew();
        for (var i = 0; i < steps; i++)
        {
            using var scope = torch.NewDisposeScope();
            var start = (firstBatch + i) % batchesAvailable * batchSize;
            var x = MemoryFormat.Apply(train.Images.narrow(0, start, batchSize).to(device), channelsLast);
            var y = train.Labels.narrow(0, start, batchSize).to(device);
            var loss = nn.functional.cross_entropy(model.call(x), y);
            optimizer.zero_grad();
            loss.backward();
            optimizer.step();
            // Reading the loss waits for the device, so the clock measures finished work.
            _ = loss.item<float>();
        }
        var seconds = clock.Elapsed.TotalSeconds;
        return (seconds, (PageFaults.MinorFaults() ?? 0) - faultsBefore);
    }

    private static double Median(List<double> values)
    {
        var sorted = values.OrderBy(v => v).ToList();
        int n = sorted.Count;
        return n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
    }
}
