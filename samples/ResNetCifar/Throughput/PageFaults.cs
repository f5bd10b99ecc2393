using System;
using System.Globalization;
using System.IO;

namespace ResNetCifar.Throughput;

/// <summary>
/// The process's minor page faults so far (Linux: field 10 of /proc/self/stat), or null elsewhere.
/// A fresh output buffer is mapped in page by page on first touch, and on virtual machines each such fault
/// can cost microseconds, so inside a training step the allocator's reuse of memory can matter as much as
/// the kernels; the throughput comparison reports faults per step beside images per second.
/// </summary>
internal static class PageFaults
{
    public static long? MinorFaults()
    {
        if (!OperatingSystem.IsLinux()) return null;
        try
        {
            var stat = File.ReadAllText("/proc/self/stat");
            // The command name (field 2) is parenthesised and may hold spaces: count fields after the last ')'.
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return long.Parse(fields[7], CultureInfo.InvariantCulture);
        }
        catch (IOException)
        {
            return null;
        }
    }
}
