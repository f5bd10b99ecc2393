using System.Collections.Generic;
using ResNetCifar.Training;

namespace ResNetCifar.Study;

/// <summary>
/// A finished run: its test accuracy after the last epoch and, for BatchNorm, the two numbers that tell
/// noisy training statistics from a train/test mismatch: the last epoch's training accuracy (measured in
/// training mode, with the slice statistics the network trained with) and the test accuracy after precise BN
/// (running statistics re-estimated over training images after training).
/// </summary>
internal sealed record StudyResult(
    string View, string Norm, int StatsBatch, int Workers, int TotalBatch, long Seed, double LearningRate, int Epochs, long Steps,
    double TestAccuracy, double TestLoss, double TrainAccuracy, double PreciseBatchNormAccuracy, double Seconds,
    IReadOnlyList<EpochResult> Curve)
{
    public string Key => StudyRun.KeyOf(View, Norm, StatsBatch, Workers, Seed);

    /// <summary>The largest change of test accuracy over the last <paramref name="epochs"/> epochs, from their first to the final one.</summary>
    public double LastEpochsChange(int epochs)
    {
        var evaluated = new List<double>();
        foreach (var e in Curve)
        {
            if (!double.IsNaN(e.TestAccuracy)) evaluated.Add(e.TestAccuracy);
        }
        if (evaluated.Count < 2) return double.NaN;
        var first = System.Math.Max(0, evaluated.Count - epochs);
        var change = 0.0;
        for (var i = first; i < evaluated.Count - 1; i++) change = System.Math.Max(change, System.Math.Abs(evaluated[^1] - evaluated[i]));
        return change;
    }
}
