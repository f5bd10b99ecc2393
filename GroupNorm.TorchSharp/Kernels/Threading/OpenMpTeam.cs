using System.Runtime.InteropServices;

namespace GroupNormalization.Kernels.Threading;

/// <summary>
/// Runs a <see cref="ParallelJob"/> as one parallel region on libtorch's own OpenMP thread team.
/// <para>
/// Why: after every op, libtorch's OpenMP threads keep spinning on every core for a while, waiting for
/// the next region. Threads of our own then get no core, and a kernel right after a convolution ran on
/// the caller alone (measured: our GroupNorm 1.9–3.3× slower than the built-in inside a network, 0.83× in
/// isolation). Entering a region on the same team hands the work to the threads that are spinning anyway,
/// exactly as libtorch's own ops do.
/// </para>
/// <para>
/// How: the runtime's C entry point <c>GOMP_parallel(fn, data, num_threads, flags)</c> (libgomp's, also
/// exported by LLVM's libomp) runs <c>fn(data)</c> on every thread of the team, the caller included as
/// thread 0, and returns when all have finished, so the job can live on the caller's stack. The callback
/// is an <see cref="UnmanagedCallersOnlyAttribute"/> method; <see cref="ParallelJob.Work"/> never lets an exception
/// out, and the caller rethrows it after the region.
/// </para>
/// </summary>
internal static unsafe class OpenMpTeam
{
    private static readonly delegate* unmanaged<delegate* unmanaged<void*, void>, void*, uint, uint, void> s_parallel;
    private static readonly delegate* unmanaged<int> s_inParallel;
    private static readonly delegate* unmanaged<int> s_threadNum;
    private static readonly delegate* unmanaged<int> s_numThreads;

#pragma warning disable CA1810 // One lookup decides every field together; an initializer per field would repeat it.
    static OpenMpTeam()
#pragma warning restore CA1810
    {
        var found = OpenMpRuntimeLocator.Locate(out var reason);
        if (found is { } runtime)
        {
            if (NativeLibrary.TryGetExport(runtime.Handle, "GOMP_parallel", out var parallel)
                && NativeLibrary.TryGetExport(runtime.Handle, "omp_in_parallel", out var inParallel)
                && NativeLibrary.TryGetExport(runtime.Handle, "omp_get_thread_num", out var threadNum))
            {
                s_parallel = (delegate* unmanaged<delegate* unmanaged<void*, void>, void*, uint, uint, void>)parallel;
                s_inParallel = (delegate* unmanaged<int>)inParallel;
                s_threadNum = (delegate* unmanaged<int>)threadNum;
                // Optional, only to report the team's real size (KernelOverride.LastThreads): a runtime
                // without it still runs the kernels.
                if (NativeLibrary.TryGetExport(runtime.Handle, "omp_get_num_threads", out var numThreads))
                    s_numThreads = (delegate* unmanaged<int>)numThreads;
                RuntimePath = runtime.Path;
                Unavailable = null;
                return;
            }
            reason = $"{runtime.Path} lacks GOMP_parallel, omp_in_parallel or omp_get_thread_num";
        }
        Unavailable = reason;
    }

    /// <summary>Whether libtorch's OpenMP team can be used in this process.</summary>
    public static bool Available => s_parallel != null;

    /// <summary>The runtime's file, when available.</summary>
    public static string? RuntimePath { get; }

    /// <summary>Why the team cannot be used, when it cannot.</summary>
    public static string? Unavailable { get; }

    /// <summary>Whether the calling thread is already inside a parallel region (then nested regions run serially).</summary>
    public static bool InParallel => s_inParallel() != 0;

    /// <summary>
    /// libgomp's <c>GOMP_parallel(fn, data, num_threads, flags)</c>: runs <c>fn(data)</c> on every thread of a
    /// team of up to num_threads, the caller included, and returns when all have finished. Called directly
    /// by <see cref="ParallelFor.Run"/> with <see cref="Region"/>, so that no frame of ours stands between the
    /// loop and the region.
    /// </summary>
    public static delegate* unmanaged<delegate* unmanaged<void*, void>, void*, uint, uint, void> Parallel => s_parallel;

    /// <summary>
    /// Each team thread's part of a <see cref="ParallelJob"/>: thread 0 (the caller) also records the team's
    /// real size, which the runtime may make smaller than asked (OMP_THREAD_LIMIT, OMP_DYNAMIC).
    /// </summary>
    [UnmanagedCallersOnly]
    public static void Region(void* job)
    {
        var items = (ParallelJob*)job;
        int thread = s_threadNum();
        if (thread == 0 && s_numThreads != null) items->Team = s_numThreads();
        items->Work(thread);
    }
}
