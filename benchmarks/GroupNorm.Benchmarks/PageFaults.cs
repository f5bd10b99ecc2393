using System;
using System.Globalization;
using System.IO;

namespace GroupNormalization.Benchmarks;

/// <summary>
/// The process's minor page faults so far (Linux: field 10 of /proc/self/stat), or null elsewhere. A fresh
/// output buffer is faulted in page by page on first touch, 10–20 µs each on the virtual machines we measure
/// on, so the interleaved in-network and residual comparisons print faults per call beside the times.
/// </summary>
internal static class PageFaults
{
    public static long? Minor()
    {
        if (!OperatingSystem.IsLinux()) return null;
        try
        {
            var stat = File.ReadAllText("/proc/self/stat");
            // The command name (field 2) is parenthesised and may hold spaces: count the fields after the last ')'.
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return long.Parse(fields[7], CultureInfo.InvariantCulture);
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>Minor faults per call of <paramref name="action"/> over <paramref name="calls"/> calls, or NaN where not measurable.</summary>
    public static double PerCall(Action action, int calls)
    {
        long? before = Minor();
        for (int i = 0; i < calls; i++) action();
        long? after = Minor();
        return before is long b && after is long a ? (double)(a - b) / calls : double.NaN;
    }
}
