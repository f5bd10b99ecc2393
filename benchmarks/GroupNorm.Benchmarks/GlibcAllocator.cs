using System;
using System.Runtime.InteropServices;

namespace GroupNormalization.Benchmarks;

/// <summary>glibc's allocator settings: for the peak-memory mode (see <see cref="PeakMemory"/>) and the warm-allocator speed runs.</summary>
internal static partial class GlibcAllocator
{
    private const int TrimThreshold = -1;   // M_TRIM_THRESHOLD
    private const int MmapThreshold = -3;   // M_MMAP_THRESHOLD

    /// <summary>Makes every block of 64 KiB or more an mmap of its own and trims the heap eagerly; false where glibc is absent.</summary>
    public static bool ReturnFreedMemoryAtOnce() => TrySet(64 * 1024, 0);

    /// <summary>
    /// Keeps freed memory in the process: blocks up to 32 MiB (glibc's largest mmap threshold) come from
    /// the heap, and the heap is trimmed only above 1 GiB free. Outputs then reuse pages already mapped
    /// instead of faulting fresh ones in, whatever order earlier benchmarks left the heap in; false where
    /// glibc is absent.
    /// </summary>
    public static bool KeepFreedMemory() => TrySet(32 * 1024 * 1024, 1024 * 1024 * 1024);

    private static bool TrySet(int mmapThreshold, int trimThreshold)
    {
        try
        {
            return mallopt(MmapThreshold, mmapThreshold) == 1 && mallopt(TrimThreshold, trimThreshold) == 1;
        }
        catch (DllNotFoundException)
        {
            return false;
        }
        catch (EntryPointNotFoundException)
        {
            return false;
        }
    }

    [LibraryImport("libc", EntryPoint = "mallopt")]
    [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
    private static partial int mallopt(int param, int value);
}
