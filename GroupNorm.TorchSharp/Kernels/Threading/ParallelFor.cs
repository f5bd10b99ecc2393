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
    /// <summary>The backend loops use unless a <see cref="KernelOverride"/> says otherwise.</summary>
    public static ParallelBackend DefaultBackend =>
        OpenMpTeam.Available ? ParallelBackend.OpenMp : ParallelBackend.KernelThreads;

    /// <summary>What runs the kernels' threads in this process, for logs and benchmark reports.</summary>
    public static string Description =>
        OpenMpTeam.Available
            ? $"libtorch's OpenMP team ({System.IO.Path.GetFileName(OpenMpTeam.RuntimePath)})"
            : $"GroupNorm's own worker threads ({OpenMpTeam.Unavailable})";

    /// <summary>
    /// Runs the loop on up to <paramref name="threads"/> threads (fewer when there are fewer items), or on the
    /// caller alone when asked for one thread or when already inside a parallel region, as libtorch's own
    /// parallel_for does: a nested region would only oversubscribe the cores.
    /// </summary>
    public static void Run(long count, int threads, delegate*<void*, long, long, void> body, void* state)
    {
        if (count <= 0) return;
        var overridden = KernelOverride.Current;
        threads = (int)Math.Min(threads, count);
        var backend = overridden?.Backend ?? DefaultBackend;
        int used;
        if (threads <= 1 || (backend == ParallelBackend.OpenMp && OpenMpTeam.InParallel))
        {
            used = 1;
            body(state, 0, count);
        }
        else
        {
            var job = new ParallelJob(count, threads, body, state, overridden?.Watcher ?? IntPtr.Zero);
            if (backend == ParallelBackend.OpenMp)
            {
                job.Team = threads;
                OpenMpTeam.Parallel(&OpenMpTeam.Region, &job, (uint)threads, 0);
                job.ThrowIfFailed();
                used = job.Team;
            }
            else
            {
                used = KernelThreads.Run(ref job);
            }
        }
        overridden?.RecordThreads(used);
    }
}
