using System.Globalization;

namespace ResNetCifar.Study;

/// <summary>
/// What every run of the study shares: network, data sizes, schedule and the seeds per configuration.
/// <see cref="Default"/> is the documented study; its length comes from the sweep (<c>study --sweep</c>,
/// docs/sample-results.md): at 15 epochs GroupNorm trailed BatchNorm by 3.2 points on the validation split,
/// at 30 by 1.0, and 25 is what 25 runs fit into the 90-minute budget on 2 cores with two runs at a time.
/// <see cref="Quick"/> runs the same pipeline on a tiny budget.
/// </summary>
internal sealed record StudyProtocol
{
    /// <summary>CIFAR ResNet depth (6n + 2).</summary>
    public int Depth { get; init; } = 8;

    /// <summary>Training images, a fixed subset of the training split (the same for every run).</summary>
    public long TrainImages { get; init; } = 6000;

    /// <summary>Validation images for the sweep, carved from the training split, disjoint from the training subset.</summary>
    public long ValidationImages { get; init; } = 5000;

    /// <summary>Test images, a fixed subset of the test split, evaluated after every epoch.</summary>
    public long TestImages { get; init; } = 5000;

    public int Epochs { get; init; } = 25;

    /// <summary>Images per step in the per-device view; its BatchNorm slices divide it.</summary>
    public int TotalBatch { get; init; } = 32;

    /// <summary>Learning rate at <see cref="TotalBatch"/> images per step; other totals scale it linearly (Goyal et al.).</summary>
    public double LearningRate { get; init; } = 0.1;

    public double WarmupFraction { get; init; } = 0.05;

    public double WeightDecay { get; init; } = 5e-4;

    public bool NormWeightDecay { get; init; }

    public long Groups { get; init; } = 8;

    /// <summary>Emulated workers in the paper's protocol (item 2): W devices of b images each, W·b per step.</summary>
    public int Workers { get; init; } = 4;

    /// <summary>Seeds for BatchNorm at the largest and smallest slice and for GroupNorm.</summary>
    public int MainSeeds { get; init; } = 3;

    /// <summary>Seeds for every other configuration.</summary>
    public int OtherSeeds { get; init; } = 2;

    /// <summary>Training images (unaugmented) that precise BN re-estimates BatchNorm's statistics over.</summary>
    public long PreciseBatchNormImages { get; init; } = 500;

    /// <summary>The seed of the data subsets: fixed, so that every run sees the same images.</summary>
    public long DataSeed { get; init; } = 1;

    public static StudyProtocol Default { get; } = new();

    public static StudyProtocol Quick { get; } = new()
    {
        TrainImages = 1024,
        ValidationImages = 512,
        TestImages = 512,
        Epochs = 2,
        PreciseBatchNormImages = 200,
    };

    /// <summary>One line that identifies the protocol; a study folder holds the results of one protocol only.</summary>
    public string Signature() => string.Create(CultureInfo.InvariantCulture,
        $"depth={Depth};train={TrainImages};validation={ValidationImages};test={TestImages};epochs={Epochs};total_batch={TotalBatch};lr={LearningRate:G6};warmup={WarmupFraction:G6};wd={WeightDecay:G6};norm_wd={NormWeightDecay};groups={Groups};workers={Workers};seeds={MainSeeds}/{OtherSeeds};precise_bn={PreciseBatchNormImages};data_seed={DataSeed}");
}
