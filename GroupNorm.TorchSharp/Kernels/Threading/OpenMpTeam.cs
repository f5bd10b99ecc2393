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
    private static readonly delegate* unmanaged<int> s_threadLimit;

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
                // Optional, for the tests only (the team size a loop reports, the runtime's limit on it): a
                // runtime without them still runs the kernels.
                if (NativeLibrary.TryGetExport(runtime.Handle, "omp_get_num_threads", out var numThreads))
                    s_numThreads = (delegate* unmanaged<int>)numThreads;
                if (NativeLibrary.TryGetExport(runtime.Handle, "omp_get_thread_limit", out var threadLimit))
                    s_threadLimit = (delegate* unmanaged<int>)threadLimit;
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

    /// <summary>The most threads the runtime gives a team (OMP_THREAD_LIMIT), or int.MaxValue when it does not say.</summary>
    public static int ThreadLimit => s_threadLimit != null ? s_threadLimit() : int.MaxValue;

    /// <summary>This thread's number in its team (0 outside a region).</summary>
    public static int ThreadNum => s_threadNum();

    /// <summary>
    /// Runs <paramref name="job"/> on a team of up to <paramref name="threads"/> threads, the caller included;
    /// returns the team's size, which the runtime may make smaller (OMP_THREAD_LIMIT, OMP_DYNAMIC), or the
    /// count asked for where the runtime cannot say.
    /// </summary>
    public static int Run(ParallelJob* job, int threads)
    {
        job->Team = threads;
        s_parallel(&Region, job, (uint)threads, 0);
        job->ThrowIfFailed();
        return job->Team;
    }

    /// <summary>
    /// Runs <paramref name="body"/> once on every thread of a team of <paramref name="threads"/>, with no
    /// work sharing: for tests that look at the team itself.
    /// </summary>
    internal static void RunOnEveryThread(int threads, delegate*<void*, void> body, void* state)
    {
        var call = new EveryThread { Body = body, State = state };
        s_parallel(&EveryThreadRegion, &call, (uint)threads, 0);
    }

    [UnmanagedCallersOnly]
    private static void Region(void* job)
    {
        var items = (ParallelJob*)job;
        int thread = s_threadNum();
        if (thread == 0 && s_numThreads != null) items->Team = s_numThreads();
        items->Work(thread);
    }

    private struct EveryThread
    {
        public delegate*<void*, void> Body;
        public void* State;
    }

    [UnmanagedCallersOnly]
    private static void EveryThreadRegion(void* call)
    {
        var c = (EveryThread*)call;
        c->Body(c->State);
    }
}
