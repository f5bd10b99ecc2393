using System;

namespace GroupNormalization.Kernels.Threading;

/// <summary>Where a parallel loop's items run.</summary>
internal enum ParallelBackend
{
    /// <summary>A region on libtorch's OpenMP team (<see cref="OpenMpTeam"/>).</summary>
    OpenMp,

    /// <summary>Our own worker threads (<see cref="KernelThreads"/>): where libtorch's team cannot be shared.</summary>
    KernelThreads,
}

/// <summary>
/// The fused kernels' parallel loop: runs <c>body(state, start, end)</c> over disjoint chunks that cover
/// [0, count), on libtorch's OpenMP team when it can be shared, else on our own threads.
/// </summary>
internal static unsafe class ParallelFor
{
    [ThreadStatic]
    private static ParallelBackend? t_forced;

    [ThreadStatic]
    private static int t_lastThreads;

    /// <summary>
    /// How many threads the last loop on this thread ran on, the caller included (1: the caller alone), as
    /// the backend started them: after every cap, not the count asked for.
    /// </summary>
    internal static int LastThreads => t_lastThreads;

    /// <summary>The backend loops on this thread use.</summary>
    public static ParallelBackend Backend =>
        t_forced ?? (OpenMpTeam.Available ? ParallelBackend.OpenMp : ParallelBackend.KernelThreads);

    /// <summary>What runs the kernels' threads in this process, for logs and benchmark reports.</summary>
    public static string Description =>
        OpenMpTeam.Available
            ? $"libtorch's OpenMP team ({System.IO.Path.GetFileName(OpenMpTeam.RuntimePath)})"
            : $"GroupNorm's own worker threads ({OpenMpTeam.Unavailable})";

    /// <summary>
    /// Uses <paramref name="backend"/> for loops on this thread until the returned scope is disposed: tests
    /// run the fallback on a machine where OpenMP is available, and benchmarks compare the two.
    /// </summary>
    public static IDisposable Force(ParallelBackend backend)
    {
        if (backend == ParallelBackend.OpenMp && !OpenMpTeam.Available)
            throw new InvalidOperationException($"libtorch's OpenMP team cannot be used here: {OpenMpTeam.Unavailable}");
        return new ForcedScope(backend);
    }

    /// <summary>
    /// Runs the loop on up to <paramref name="threads"/> threads (fewer when there are fewer items), or on the
    /// caller alone when asked for one thread or when already inside a parallel region, as libtorch's own
    /// parallel_for does: a nested region would only oversubscribe the cores.
    /// </summary>
    public static void Run(long count, int threads, delegate*<void*, long, long, void> body, void* state)
    {
        if (count <= 0) return;
        threads = (int)Math.Min(threads, count);
        var backend = Backend;
        if (threads <= 1 || (backend == ParallelBackend.OpenMp && OpenMpTeam.InParallel))
        {
            t_lastThreads = 1;
            body(state, 0, count);
            return;
        }
        if (backend == ParallelBackend.OpenMp)
        {
            var job = new ParallelJob(count, threads, body, state);
            t_lastThreads = OpenMpTeam.Run(&job, threads);
        }
        else
        {
            t_lastThreads = KernelThreads.Run(count, threads, body, state);
        }
    }

    private sealed class ForcedScope : IDisposable
    {
        private readonly ParallelBackend? _previous;

        public ForcedScope(ParallelBackend backend)
        {
            _previous = t_forced;
            t_forced = backend;
        }

        public void Dispose() => t_forced = _previous;
    }
}
