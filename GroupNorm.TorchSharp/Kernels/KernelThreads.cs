using System;
using System.Diagnostics;
using System.Threading;

namespace GroupNormalization.Kernels;

/// <summary>
/// Runs the fused kernels' work items on the calling thread plus dedicated worker threads.
/// <para>
/// Why not <see cref="System.Threading.Tasks.Parallel"/>: waking .NET thread-pool threads costs tens of
/// microseconds, as long as a whole GroupNorm on a 160K-element tensor. These workers spin for
/// <see cref="SpinMicroseconds"/> after a job (back-to-back layers find them awake), then sleep.
/// </para>
/// <para>
/// Why items are claimed, not split statically: inside a network, libtorch's OpenMP threads keep
/// spinning on every core for a while after each convolution. A worker posted a fixed half of the job
/// may then not run for a whole scheduler time slice, and a caller that waits for that half stalls for
/// milliseconds (measured: ResNet-20 training at 0.6× the built-in's speed on 2 cores). Here every
/// thread, the caller included, claims chunks of items from a shared counter, and the caller waits only
/// for chunks a worker has actually started. A worker that wakes late finds nothing left and returns,
/// so the worst case is the caller doing everything alone: single-threaded speed, never a stall.
/// </para>
/// <para>
/// Each job lives in its own object and workers take jobs from a one-slot mailbox, so concurrent callers
/// need no lock: a job a worker never picks up is finished by its own caller.
/// </para>
/// </summary>
internal static class KernelThreads
{
    private const int SpinMicroseconds = 30;
    private static readonly long SpinTicks = Stopwatch.Frequency * SpinMicroseconds / 1_000_000;

    /// <summary>Chunks per thread: small enough to rebalance when a thread starts late, large enough that claiming is free.</summary>
    private const int ChunksPerThread = 8;

    private static readonly Lazy<Worker[]> Workers = new(StartWorkers, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>Runs <paramref name="body"/> for every item in [0, <paramref name="count"/>) on up to <paramref name="threads"/> threads.</summary>
    public static void Run(long count, int threads, Action<long> body)
    {
        threads = (int)Math.Min(threads, count);
        if (threads <= 1)
        {
            for (long i = 0; i < count; i++) body(i);
            return;
        }

        var workers = Workers.Value;
        threads = Math.Min(threads, workers.Length + 1);
        var job = new Job(count, Math.Max(1, count / (threads * (long)ChunksPerThread)), body);
        for (int w = 0; w < threads - 1; w++) workers[w].Post(job);
        job.Work();
        job.WaitUntilFinished();
        job.ThrowIfFailed();
    }

    private static Worker[] StartWorkers()
    {
        var workers = new Worker[Math.Clamp(Environment.ProcessorCount - 1, 1, 255)];
        for (int i = 0; i < workers.Length; i++) workers[i] = new Worker(i + 1);
        return workers;
    }

    private sealed class Job
    {
        private readonly long _count;
        private readonly long _chunk;
        private readonly Action<long> _body;
        private long _claimed;
        private long _finished;
        private Exception? _failure;

        public Job(long count, long chunk, Action<long> body)
        {
            _count = count;
            _chunk = chunk;
            _body = body;
        }

        /// <summary>Claims and runs chunks until none is left; safe to call from any thread, at any time.</summary>
        public void Work()
        {
            while (true)
            {
                long start = Interlocked.Add(ref _claimed, _chunk) - _chunk;
                if (start >= _count) return;
                long end = Math.Min(_count, start + _chunk);
                try
                {
                    for (long i = start; i < end; i++) _body(i);
                }
#pragma warning disable CA1031 // Rethrown on the calling thread by ThrowIfFailed; a worker must not die.
                catch (Exception e)
#pragma warning restore CA1031
                {
                    Interlocked.CompareExchange(ref _failure, e, null);
                }
                Interlocked.Add(ref _finished, end - start);
            }
        }

        /// <summary>Waits for chunks other threads are still running (every chunk is claimed once Work returns).</summary>
        public void WaitUntilFinished()
        {
            var spin = new SpinWait();
            while (Volatile.Read(ref _finished) != _count) spin.SpinOnce(sleep1Threshold: -1);
        }

        public void ThrowIfFailed()
        {
            if (_failure is not null) throw new AggregateException("A GroupNorm kernel work item failed.", _failure);
        }
    }

    // Workers live as long as the process, so their wake event is never disposed.
#pragma warning disable CA1001
    private sealed class Worker
#pragma warning restore CA1001
    {
        private readonly ManualResetEventSlim _wake = new(false, 0);
        private Job? _mailbox;

        public Worker(int index)
        {
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
                job.Work();
            }
        }
    }
}
