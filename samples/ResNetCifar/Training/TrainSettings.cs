using ResNetCifar.Models;

namespace ResNetCifar.Training;

/// <summary>Everything one training run needs besides the data.</summary>
internal sealed record TrainSettings
{
    public string Model { get; init; } = ModelFactory.CifarResNetName;
    public int Depth { get; init; } = 20;
    public NormKind Norm { get; init; } = NormKind.Gn;
    public long Groups { get; init; } = 8;
    public long? ChannelsPerGroup { get; init; }

    /// <summary>BatchNorm's statistics over slices of this many images (emulated per-device BatchNorm); null: the whole batch.</summary>
    public int? BatchNormSlice { get; init; }

    /// <summary>Weight-standardized convolutions (GroupNorm.TorchSharp's WeightStandardizedConv2d) in the CIFAR ResNet.</summary>
    public bool WeightStandardization { get; init; }

    /// <summary>Apply weight decay to the norms' γ and β too (by default they are exempt).</summary>
    public bool NormWeightDecay { get; init; }

    /// <summary>Random crop and flip for every data set (null: the data set's own choice, on for CIFAR only).</summary>
    public bool? Augment { get; init; }
    public int Epochs { get; init; } = 1;
    public int BatchSize { get; init; } = 32;
    public double LearningRate { get; init; } = 0.1;
    public double Momentum { get; init; } = 0.9;
    public double WeightDecay { get; init; } = 5e-4;
    public LrSchedule Schedule { get; init; } = LrSchedule.Cosine;

    /// <summary>Fraction of all steps spent ramping the learning rate up linearly from near zero.</summary>
    public double WarmupFraction { get; init; } = 0.03;

    /// <summary>Stop after this many training images in total (0: all epochs in full); the schedule spans the budget.</summary>
    public long ImageBudget { get; init; }

    public long Seed { get; init; } = 1;
    public string Device { get; init; } = "cpu";

    /// <summary>
    /// With our GroupNorm, run each residual block's norm1 + ReLU and norm2 + shortcut + ReLU as single fused
    /// layers (false: the plain drop-in, norm then separate ReLU and add, for comparison).
    /// </summary>
    public bool FuseBlocks { get; init; } = true;

    /// <summary>Feed batches in channels_last memory format (and so run every layer in it).</summary>
    public bool ChannelsLast { get; init; }
    public string? CsvPath { get; init; }
    public string? CheckpointPath { get; init; }
    public bool Resume { get; init; }

    /// <summary>Evaluate after every epoch (the study evaluates once at the end instead).</summary>
    public bool EvaluateEachEpoch { get; init; } = true;

    public int EvalBatchSize { get; init; } = 500;

    public NormFactory CreateNormFactory() => new(Norm, Groups, ChannelsPerGroup, BatchNormSlice, FuseBlocks);

    public ConvFactory CreateConvFactory() => new(WeightStandardization);
}
