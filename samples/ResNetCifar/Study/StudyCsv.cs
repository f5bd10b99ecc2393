using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using ResNetCifar.Training;

namespace ResNetCifar.Study;

/// <summary>
/// The study's files: one row per finished run (<c>{name}.csv</c>, with a seed column) and one row per
/// epoch of each finished run (<c>{name}-epochs.csv</c>). Both are rewritten whole, through a temporary
/// file, after every run, so an interrupted study leaves complete files that the next start resumes from.
/// </summary>
internal static class StudyCsv
{
    private const string RunHeader = "view,norm,stats_batch,workers,total_batch,seed,learning_rate,epochs,steps,test_accuracy,test_loss,train_accuracy,precise_bn_test_accuracy,seconds";
    private const string EpochHeader = "view,norm,stats_batch,workers,seed,epoch,train_loss,train_accuracy,test_loss,test_accuracy,learning_rate,seconds";

    public static void Write(string runsPath, string epochsPath, IEnumerable<StudyResult> results)
    {
        var ordered = results.ToList();
        WriteAtomically(runsPath, writer =>
        {
            writer.WriteLine(RunHeader);
            foreach (var r in ordered)
            {
                writer.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{r.View},{r.Norm},{r.StatsBatch},{r.Workers},{r.TotalBatch},{r.Seed},{r.LearningRate:G6},{r.Epochs},{r.Steps},{r.TestAccuracy:F4},{r.TestLoss:F4},{r.TrainAccuracy:F4},{r.PreciseBatchNormAccuracy:F4},{r.Seconds:F1}"));
            }
        });
        WriteAtomically(epochsPath, writer =>
        {
            writer.WriteLine(EpochHeader);
            foreach (var r in ordered)
            {
                foreach (var e in r.Curve)
                {
                    writer.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"{r.View},{r.Norm},{r.StatsBatch},{r.Workers},{r.Seed},{e.Epoch},{e.TrainLoss:F4},{e.TrainAccuracy:F4},{e.TestLoss:F4},{e.TestAccuracy:F4},{e.LearningRate:G6},{e.Seconds:F1}"));
                }
            }
        });
    }

    /// <summary>The finished runs in a study folder (none when the files do not exist yet).</summary>
    public static List<StudyResult> Read(string runsPath, string epochsPath)
    {
        var results = new List<StudyResult>();
        if (!File.Exists(runsPath)) return results;
        var curves = new Dictionary<string, List<EpochResult>>();
        if (File.Exists(epochsPath))
        {
            foreach (var f in Rows(epochsPath, EpochHeader))
            {
                var key = StudyRun.KeyOf(f[0], f[1], Int(f[2]), Int(f[3]), Long(f[4]));
                if (!curves.TryGetValue(key, out var curve)) curves[key] = curve = [];
                curve.Add(new EpochResult(Int(f[5]), 0, Double(f[6]), Double(f[7]), Double(f[8]), Double(f[9]), Double(f[11]), double.NaN, Double(f[10])));
            }
        }
        foreach (var f in Rows(runsPath, RunHeader))
        {
            var key = StudyRun.KeyOf(f[0], f[1], Int(f[2]), Int(f[3]), Long(f[5]));
            results.Add(new StudyResult(f[0], f[1], Int(f[2]), Int(f[3]), Int(f[4]), Long(f[5]), Double(f[6]), Int(f[7]), Long(f[8]),
                Double(f[9]), Double(f[10]), Double(f[11]), Double(f[12]), Double(f[13]), curves.GetValueOrDefault(key) ?? []));
        }
        return results;
    }

    private static IEnumerable<string[]> Rows(string path, string header)
    {
        var lines = File.ReadAllLines(path);
        if (lines.Length == 0 || lines[0] != header)
            throw new InvalidDataException($"{path} does not start with the header '{header}'; it was not written by this version of the study. Use another --out folder.");
        var columns = header.Split(',').Length;
        for (var i = 1; i < lines.Length; i++)
        {
            if (lines[i].Length == 0) continue;
            var fields = lines[i].Split(',');
            if (fields.Length != columns)
                throw new InvalidDataException($"{path}, line {i + 1}: {fields.Length} fields where the header has {columns}.");
            yield return fields;
        }
    }

    private static void WriteAtomically(string path, Action<TextWriter> write)
    {
        var temporary = path + ".tmp";
        using (var writer = new StreamWriter(temporary)) write(writer);
        File.Move(temporary, path, overwrite: true);
    }

    private static int Int(string s) => int.Parse(s, CultureInfo.InvariantCulture);

    private static long Long(string s) => long.Parse(s, CultureInfo.InvariantCulture);

    private static double Double(string s) => double.Parse(s, CultureInfo.InvariantCulture);
}
