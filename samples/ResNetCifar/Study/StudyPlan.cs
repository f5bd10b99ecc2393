using System.Collections.Generic;
using System.Globalization;
using ResNetCifar.Models;
using ResNetCifar.Training;

namespace ResNetCifar.Study;

/// <summary>The runs of the study and of the sweep that chose its settings, in the order they are run.</summary>
internal static class StudyPlan
{
    public const string BatchNormName = "BN";
    public const string GroupNormName = "GN";
    public const string WeightStandardizedName = "GN+WS";

    /// <summary>BatchNorm's slices in the per-device view (b, images per emulated device).</summary>
    public static readonly int[] SliceSizes = [32, 16, 8, 4, 2];

    /// <summary>The two per-device batches of the paper's protocol (item 2 of the study).</summary>
    public static readonly int[] WorkerSlices = [32, 2];

    /// <summary>
    /// Seed by seed, so that an interrupted study already has whole seeds: the per-device view (BatchNorm at
    /// every slice, GroupNorm once, GroupNorm with weight standardization), then the paper's protocol.
    /// The configurations that get <see cref="StudyProtocol.MainSeeds"/> (BatchNorm at the largest and
    /// smallest slice, GroupNorm) come first within a seed.
    /// </summary>
    public static IReadOnlyList<StudyRun> Study(StudyProtocol protocol, TrainSettings baseSettings)
    {
        var runs = new List<StudyRun>();
        var seeds = System.Math.Max(protocol.MainSeeds, protocol.OtherSeeds);
        for (long seed = 1; seed <= seeds; seed++)
        {
            var main = seed <= protocol.MainSeeds;
            var other = seed <= protocol.OtherSeeds;
            if (main)
            {
                runs.Add(BatchNorm(protocol, baseSettings, StudyRun.PerDeviceView, SliceSizes[0], 1, protocol.TotalBatch, seed));
                runs.Add(BatchNorm(protocol, baseSettings, StudyRun.PerDeviceView, SliceSizes[^1], 1, protocol.TotalBatch, seed));
                runs.Add(GroupNorm(protocol, baseSettings, StudyRun.PerDeviceView, GroupNormName, 0, 1, protocol.TotalBatch, seed));
            }
            if (other)
            {
                for (var i = 1; i < SliceSizes.Length - 1; i++)
                    runs.Add(BatchNorm(protocol, baseSettings, StudyRun.PerDeviceView, SliceSizes[i], 1, protocol.TotalBatch, seed));
                runs.Add(GroupNorm(protocol, baseSettings, StudyRun.PerDeviceView, WeightStandardizedName, 0, 1, protocol.TotalBatch, seed));
                foreach (var b in WorkerSlices)
                {
                    runs.Add(BatchNorm(protocol, baseSettings, StudyRun.WorkersView, b, protocol.Workers, protocol.Workers * b, seed));
                    runs.Add(GroupNorm(protocol, baseSettings, StudyRun.WorkersView, GroupNormName, b, protocol.Workers, protocol.Workers * b, seed));
                }
            }
        }
        return runs;
    }

    /// <summary>
    /// What closes GroupNorm's gap to BatchNorm at the full batch, judged on the validation split (item 3):
    /// each variant changes one setting of the protocol; BatchNorm is the reference; the two long runs
    /// are the learning curves that show whether the protocol's length lets both norms plateau.
    /// </summary>
    public static IReadOnlyList<StudyRun> Sweep(StudyProtocol protocol, TrainSettings baseSettings)
    {
        var b = protocol.TotalBatch;
        StudyRun Gn(string label, System.Func<TrainSettings, TrainSettings> change) =>
            Variant(GroupNorm(protocol, baseSettings, StudyRun.SweepView, GroupNormName, 0, 1, b, 1), label, change);
        var bn = BatchNorm(protocol, baseSettings, StudyRun.SweepView, b, 1, b, 1);
        var longEpochs = 2 * protocol.Epochs;
        return
        [
            Variant(bn, "BN", s => s),
            Gn("GN", s => s),
            Gn(Label("GN lr {0:G3}", 2 * protocol.LearningRate), s => s with { LearningRate = 2 * s.LearningRate }),
            Gn(Label("GN lr {0:G3}", protocol.LearningRate / 2), s => s with { LearningRate = s.LearningRate / 2 }),
            Gn(Label("GN warm-up {0:P0}", 3 * protocol.WarmupFraction), s => s with { WarmupFraction = 3 * s.WarmupFraction }),
            Gn("GN wd on γ/β", s => s with { NormWeightDecay = true }),
            Gn("GN+WS", s => s with { WeightStandardization = true }),
            Gn(Label("GN G={0}", protocol.Groups / 2), s => s with { Groups = protocol.Groups / 2 }),
            Gn(Label("GN G={0}", protocol.Groups * 2), s => s with { Groups = protocol.Groups * 2 }),
            Variant(bn, Label("BN {0} epochs", longEpochs), s => s with { Epochs = longEpochs }),
            Gn(Label("GN {0} epochs", longEpochs), s => s with { Epochs = longEpochs }),
        ];
    }

    private static string Label(string format, object value) => string.Format(CultureInfo.InvariantCulture, format, value);

    private static StudyRun Variant(StudyRun run, string label, System.Func<TrainSettings, TrainSettings> change) =>
        run with { Norm = label, Settings = change(run.Settings) };

    private static StudyRun BatchNorm(StudyProtocol protocol, TrainSettings baseSettings, string view, int slice, int workers, int total, long seed) =>
        new(view, BatchNormName, slice, workers, seed, Settings(protocol, baseSettings, total, seed) with { Norm = NormKind.Bn, BatchNormSlice = slice });

    private static StudyRun GroupNorm(StudyProtocol protocol, TrainSettings baseSettings, string view, string name, int slice, int workers, int total, long seed) =>
        new(view, name, slice, workers, seed, Settings(protocol, baseSettings, total, seed) with
        {
            Norm = NormKind.Gn,
            WeightStandardization = name == WeightStandardizedName,
        });

    private static TrainSettings Settings(StudyProtocol protocol, TrainSettings baseSettings, int total, long seed) => baseSettings with
    {
        Model = ModelFactory.CifarResNetName,
        Depth = protocol.Depth,
        Groups = protocol.Groups,
        ChannelsPerGroup = null,
        Epochs = protocol.Epochs,
        BatchSize = total,
        LearningRate = protocol.LearningRate * total / protocol.TotalBatch,
        WarmupFraction = protocol.WarmupFraction,
        WeightDecay = protocol.WeightDecay,
        NormWeightDecay = protocol.NormWeightDecay,
        Schedule = LrSchedule.Cosine,
        Augment = true,
        Seed = seed,
        ImageBudget = 0,
        EvaluateEachEpoch = true,
        CsvPath = null,
        CheckpointPath = null,
        Resume = false,
    };
}
