using System;
using System.Diagnostics;
using System.Threading;
using System.Threading.Tasks;

namespace GroupNormalization.Kernels;

/// <summary>
/// Runs the fused kernels' work items on the calling thread plus dedicated worker threads.
/// <para>
/// Why not <see cref="Parallel.For(long, long, Action{long})"/>: waking .NET thread-pool threads costs
/// tens of microseconds, as long as a whole GroupNorm on a 160K-element tensor, which made mid-sized
/// calls slower on two threads than on one. libtorch's OpenMP workers spin briefly between parallel
/// regions and start in about a microsecond; these workers do the same. After a job each spins for
/// <see cref="SpinMicroseconds"/> waiting for the next (back-to-back layers find it awake), then sleeps.
/// </para>
/// <para>
/// Items are split statically into one contiguous range per thread: the kernels' items (rows) are all
/// the same size. One caller at a time owns the workers; a second thread calling a kernel meanwhile
/// runs on the .NET thread pool instead of waiting.
/// </para>
/// </summary>
internal static class KernelThreads
{
    private const int SpinMicroseconds = 30;
    private static readonly long SpinTicks = Stopwatch.Frequency * SpinMicroseconds / 1_000_000;

    private static readonly object Gate = new();
    private static Worker[]? s_workers;

    /// <summary>Runs <paramref name="body"/> for every item in [0, <paramref name="count"/>) on up to <paramref name="threads"/> threads.</summary>
    public static void Run(long count, int threads, Action<long> body)
    {
        threads = (int)Math.Min(threads, count);
        if (threads <= 1)
        {
            for (long i = 0; i < count; i++) body(i);
            return;
        }
        if (!Monitor.TryEnter(Gate))
        {
            Parallel.For(0L, count, new ParallelOptions { MaxDegreeOfParallelism = threads }, body);
            return;
        }
        try
        {
            var workers = s_workers ??= StartWorkers();
            threads = Math.Min(threads, workers.Length + 1);
            var job = new Job(count, threads, body);
            for (int part = 1; part < threads; part++) workers[part - 1].Post(job, part);
            job.RunPart(0);
            for (int part = 1; part < threads; part++) workers[part - 1].WaitUntilDone();
            job.ThrowIfFailed();
        }
        finally
        {
            Monitor.Exit(Gate);
        }
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
        private readonly int _parts;
        private readonly Action<long> _body;
        private Exception? _failure;

        public Job(long count, int parts, Action<long> body)
        {
            _count = count;
            _parts = parts;
            _body = body;
        }

        public void RunPart(int part)
        {
            long end = _count * (part + 1) / _parts;
            try
            {
                for (long i = _count * part / _parts; i < end; i++) _body(i);
            }
#pragma warning disable CA1031 // Rethrown on the calling thread by ThrowIfFailed; a worker must not die.
            catch (Exception e)
#pragma warning restore CA1031
            {
                Interlocked.CompareExchange(ref _failure, e, null);
            }
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
        private Job? _job;
        private int _part;
        private int _posted;
        private int _done;

        public Worker(int index)
        {
            var thread = new Thread(Loop) { IsBackground = true, Name = $"GroupNorm kernel worker {index}" };
            thread.Start();
        }

        // Only the thread holding Gate posts, and it waits for completion before posting again.
        public void Post(Job job, int part)
        {
            _job = job;
            _part = part;
            Volatile.Write(ref _posted, _posted + 1);
            _wake.Set();
        }

        public void WaitUntilDone()
        {
            int target = Volatile.Read(ref _posted);
            var spin = new SpinWait();
            while (Volatile.Read(ref _done) != target) spin.SpinOnce(sleep1Threshold: -1);
        }

        private void Loop()
        {
            int seen = 0;
            while (true)
            {
                long deadline = Stopwatch.GetTimestamp() + SpinTicks;
                var spin = new SpinWait();
                while (Volatile.Read(ref _posted) == seen)
                {
                    if (Stopwatch.GetTimestamp() < deadline)
                    {
                        spin.SpinOnce(sleep1Threshold: -1);
                        continue;
                    }
                    // Reset, then re-check: a Post between the two is seen here; one after it wakes Wait.
                    _wake.Reset();
                    if (Volatile.Read(ref _posted) == seen) _wake.Wait();
                    deadline = Stopwatch.GetTimestamp() + SpinTicks;
                }
                seen = Volatile.Read(ref _posted);
                _job!.RunPart(_part);
                _job = null;
                Volatile.Write(ref _done, seen);
            }
        }
    }
}
