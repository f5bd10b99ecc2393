using System;
using System.Diagnostics;
using System.Threading;

namespace GroupNormalization.Kernels.Threading;

/// <summary>
/// The fallback when libtorch's OpenMP runtime cannot be shared (<see cref="OpenMpTeam"/>): the calling
/// thread plus dedicated worker threads of our own.
/// <para>
/// Why not <see cref="System.Threading.Tasks.Parallel"/>: waking .NET thread-pool threads costs tens of
/// microseconds, as long as a whole GroupNorm on a 160K-element tensor. These workers spin for
/// <see cref="SpinMicroseconds"/> after a job (back-to-back layers find them awake), then sleep. The caller is thread 0 of a job and
/// worker i its thread i, each starting on its own range of items (<see cref="ParallelJob"/>).
/// </para>
/// <para>
/// Inside a network this pool competes for cores with libtorch's OpenMP threads, which keep spinning
/// after each op; that is why OpenMP is preferred. Items are claimed (<see cref="ParallelJob"/>), so a
/// worker that wakes late finds its range taken over and the worst case is the caller doing everything alone.
/// </para>
/// <para>
/// Each job lives in its own heap object and workers take jobs from a one-slot mailbox, so concurrent
/// callers need no lock: a job a worker never picks up is finished by its own caller, and a worker that
/// picks one up after its caller returned finds every item claimed and touches nothing else.
/// </para>
/// </summary>
internal static unsafe class KernelThreads
{
    private const int SpinMicroseconds = 30;
    private static readonly long SpinTicks = Stopwatch.Frequency * SpinMicroseconds / 1_000_000;

    /// <summary>The most threads a job can use, the caller included.</summary>
    public const int MaxThreads = 256;

    // Workers 1, 2, … in order; only the first s_started exist. A job asking for more threads than have
    // started starts the missing ones, so a count forced above the core count (tests, or
    // torch.set_num_threads above it, which libtorch's OpenMP team honours too) really gets that many.
    private static readonly Worker?[] s_workers = new Worker?[MaxThreads - 1];
    private static readonly object s_startLock = new();
    private static int s_started;

    /// <summary>
    /// Runs <paramref name="items"/> on its thread count (at most <see cref="MaxThreads"/>; the job was made
    /// for no more threads than it has items); returns the count used.
    /// </summary>
    public static int Run(ref ParallelJob items)
    {
        int threads = Math.Min(items.Threads, MaxThreads);
        if (Volatile.Read(ref s_started) < threads - 1) StartWorkers(threads - 1);
        var job = new Job(items);
        for (int w = 0; w < threads - 1; w++) s_workers[w]!.Post(job);
        job.Items.Work(0);
        var spin = new SpinWait();
        while (!job.Items.Finished) spin.SpinOnce(sleep1Threshold: -1);
        job.Items.ThrowIfFailed();
        return threads;
    }

    private static void StartWorkers(int wanted)
    {
        lock (s_startLock)
        {
            for (int i = s_started; i < wanted; i++) s_workers[i] = new Worker(i + 1);
            // Published after the workers themselves, so that a reader of the count finds them.
            Volatile.Write(ref s_started, Math.Max(s_started, wanted));
        }
    }

    /// <summary>A job on the heap: workers may still look at it after its caller has returned.</summary>
    private sealed class Job
    {
        public ParallelJob Items;

        public Job(ParallelJob items) => Items = items;
    }

    // Workers live as long as the process, so their wake event is never disposed.
#pragma warning disable CA1001
    private sealed class Worker
#pragma warning restore CA1001
    {
        private readonly ManualResetEventSlim _wake = new(false, 0);
        private Job? _mailbox;

        private readonly int _index;

        public Worker(int index)
        {
            _index = index;
            var thread = new Thread(Loop) { IsBackground = true, Name = $"GroupNorm kernel worker {index}" };
            thread.Start();
        }

        /// <summary>Offers a job; a newer offer replaces one not yet taken (its caller finishes it anyway).</summary>
        public void Post(Job job)
        {
            Volatile.Write(ref _mailbox, job);
            _wake.Set();
        }

        private void Loop()
        {
            while (true)
            {
                long deadline = Stopwatch.GetTimestamp() + SpinTicks;
                var spin = new SpinWait();
                Job? job;
                while ((job = Interlocked.Exchange(ref _mailbox, null)) is null)
                {
                    if (Stopwatch.GetTimestamp() < deadline)
                    {
                        spin.SpinOnce(sleep1Threshold: -1);
                        continue;
                    }
                    // Reset, then re-check: a Post between the two is seen here; one after it wakes Wait.
                    _wake.Reset();
                    if (Volatile.Read(ref _mailbox) is null) _wake.Wait();
                    deadline = Stopwatch.GetTimestamp() + SpinTicks;
                }
                job.Items.Work(_index);
            }
        }
    }
}
