using System.Globalization;
using ResNetCifar.Training;

namespace ResNetCifar.Study;

/// <summary>
/// One training run of the study. <see cref="StatsBatch"/> is the number of images BatchNorm takes its
/// statistics over (b); it is 0 for GroupNorm, whose computation does not depend on it.
/// </summary>
internal sealed record StudyRun(string View, string Norm, int StatsBatch, int Workers, long Seed, TrainSettings Settings)
{
    public const string PerDeviceView = "per-device";
    public const string WorkersView = "workers";
    public const string SweepView = "sweep";

    public int TotalBatch => Settings.BatchSize;

    public bool IsBatchNorm => Settings.Norm == Models.NormKind.Bn;

    /// <summary>Unique within a study folder: what the resume path matches finished runs by.</summary>
    public string Key => KeyOf(View, Norm, StatsBatch, Workers, Seed);

    public static string KeyOf(string view, string norm, int statsBatch, int workers, long seed) =>
        string.Create(CultureInfo.InvariantCulture, $"{view}|{norm}|b{statsBatch}|w{workers}|s{seed}");

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"{View} {Norm}{(StatsBatch > 0 ? $" b={StatsBatch}" : "")}{(View == WorkersView ? $" W={Workers}" : "")} seed {Seed}");
}
