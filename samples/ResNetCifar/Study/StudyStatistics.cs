using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;

namespace ResNetCifar.Study;

/// <summary>Mean and sample standard deviation over seeds, and how they are printed.</summary>
internal readonly record struct SeedSummary(double Mean, double Std, int Seeds)
{
    public static SeedSummary Of(IEnumerable<double> values)
    {
        var v = values.Where(x => !double.IsNaN(x)).ToArray();
        if (v.Length == 0) return new SeedSummary(double.NaN, double.NaN, 0);
        var mean = v.Average();
        var std = v.Length > 1 ? Math.Sqrt(v.Sum(x => (x - mean) * (x - mean)) / (v.Length - 1)) : double.NaN;
        return new SeedSummary(mean, std, v.Length);
    }

    /// <summary>Percent with two decimals, "± std" when there are two seeds or more.</summary>
    public string Percent() => Seeds == 0
        ? "–"
        : string.Create(CultureInfo.InvariantCulture, $"{100 * Mean:F2}{(Seeds > 1 ? $" ± {100 * Std:F2}" : "")}");
}
