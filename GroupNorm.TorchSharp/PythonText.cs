using System;
using System.Globalization;

namespace GroupNormalization;

/// <summary>Values written as PyTorch writes them, for error messages and reprs.</summary>
internal static class PythonText
{
    /// <summary>A shape as PyTorch prints a size: [2, 3, 4].</summary>
    internal static string Shape(long[] shape) => "[" + string.Join(", ", shape) + "]";

    /// <summary>Formats a double the way Python's repr does (1e-05, 0.001).</summary>
    internal static string Repr(double value)
    {
        if (double.IsNaN(value)) return "nan";
        if (double.IsPositiveInfinity(value)) return "inf";
        if (double.IsNegativeInfinity(value)) return "-inf";
        var text = value.ToString("R", CultureInfo.InvariantCulture);
        int e = text.IndexOf('E', StringComparison.Ordinal);
        if (e < 0) return text.Contains('.', StringComparison.Ordinal) ? text : text + ".0";
        // Python writes exponents with a sign and at least two digits: 1e-05, 1e+20.
        var mantissa = text[..e];
        var exponent = int.Parse(text[(e + 1)..], CultureInfo.InvariantCulture);
        return string.Create(CultureInfo.InvariantCulture, $"{mantissa}e{(exponent < 0 ? '-' : '+')}{Math.Abs(exponent):00}");
    }
}
