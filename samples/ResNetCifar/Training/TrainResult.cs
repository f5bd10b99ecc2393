using System.Collections.Generic;

namespace ResNetCifar.Training;

/// <summary>What a run produced: one row per epoch trained in this process, and the final test figures.</summary>
internal sealed record TrainResult(IReadOnlyList<EpochResult> Epochs, double FinalTestAccuracy, double FinalTestLoss, double Seconds, long ParameterCount);
