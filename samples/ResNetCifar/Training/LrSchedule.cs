using System;

namespace ResNetCifar.Training;

/// <summary>Learning-rate schedule over the whole run, applied per step after a linear warm-up.</summary>
internal enum LrSchedule
{
    /// <summary>Half a cosine from the base rate down to zero.</summary>
    Cosine,

    /// <summary>The base rate, divided by 10 at 50% and again at 75% of the steps.</summary>
    Step,
}

internal static class LrScheduleExtensions
{
    public static double RateAt(this LrSchedule schedule, double baseRate, long step, long totalSteps, long warmupSteps)
    {
        if (step < warmupSteps) return baseRate * (step + 1) / warmupSteps;
        var progress = totalSteps <= warmupSteps ? 1.0 : (double)(step - warmupSteps) / (totalSteps - warmupSteps);
        return schedule switch
        {
            LrSchedule.Cosine => baseRate * 0.5 * (1 + Math.Cos(Math.PI * progress)),
            LrSchedule.Step => baseRate * (progress < 0.5 ? 1 : progress < 0.75 ? 0.1 : 0.01),
            _ => throw new ArgumentOutOfRangeException(nameof(schedule), schedule, "unknown schedule"),
        };
    }
}
