using System;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Threading;

namespace GroupNormalization.Kernels.Threading;

/// <summary>
/// One parallel loop over items [0, count), split the way libtorch splits its own loops: thread t of T
/// owns the contiguous range [t·count/T, (t+1)·count/T). Each thread works through its own range first,
/// in chunks claimed from that range's counter, then helps with the others' ranges; it runs
/// <c>body(state, start, end)</c> on each chunk it claims.
/// <para>
/// Why the ranges: the op before a GroupNorm (a convolution, a ReLU's backward) ran on the same OpenMP team
/// with libtorch's contiguous split, so each core's cache holds its own part of our input. Chunks claimed
/// from one shared counter scattered rows across cores, and inside a network half of every read came from
/// the other core's cache (measured on (32, 16, 32, 32) after an element-wise op, two threads: 232 µs
/// against 163 µs for the two ops apart).
/// Why the claiming: a thread that starts late (descheduled, or one of our fallback workers still waking)
/// finds its range already taken over instead of stalling everyone else.
/// </para>
/// <para>
/// An unmanaged struct with a function-pointer body, so that a kernel call allocates nothing on the managed
/// heap: on the OpenMP path it lives on the caller's stack for the whole region.
/// </para>
/// </summary>
internal unsafe struct ParallelJob
{
    /// <summary>Chunks per range: small enough to rebalance when a thread starts late, large enough that claiming is free.</summary>
    private const int ChunksPerRange = 4;

    private readonly delegate*<void*, long, long, void> _body;
    private readonly void* _state;
    private readonly long _count;
    private readonly int _threads;
    private readonly int _ranges;

    // A KernelOverride's handle when a test watches which threads run items (KernelOverride.Watcher), else zero.
    private readonly IntPtr _watcher;
    private long _finished;

    // Items claimed so far within each range, one counter per range on its own cache line.
    private RangeCounters _claimed;

    // A GCHandle to the first exception a chunk threw, or zero: a managed reference cannot live in an
    // unmanaged struct, and the happy path must not allocate.
    private IntPtr _failure;

    public ParallelJob(long count, int threads, delegate*<void*, long, long, void> body, void* state, IntPtr watcher)
    {
        _body = body;
        _state = state;
        _count = count;
        _threads = threads;
        _watcher = watcher;
        _ranges = (int)Math.Clamp(Math.Min(threads, count), 1, RangeCounters.Capacity);
    }

    public readonly long Count => _count;

    /// <summary>The threads the job was made for, the caller included.</summary>
    public readonly int Threads => _threads;

    /// <summary>The size of the team that ran the job, when its runtime reports one (see <see cref="OpenMpTeam.Region"/>).</summary>
    public int Team;

    /// <summary>
    /// Runs chunks of <paramref name="thread"/>'s own range, then of the others', until none is left.
    /// Never throws: it may run under native code.
    /// </summary>
    public void Work(int thread)
    {
        int home = thread % _ranges;
        for (int k = 0; k < _ranges; k++)
        {
            int range = (home + k) % _ranges;
            long begin = _count * range / _ranges, end = _count * (range + 1) / _ranges;
            long chunk = Math.Max(1, (end - begin + ChunksPerRange - 1) / ChunksPerRange);
            ref long claimed = ref _claimed[range * RangeCounters.Stride];
            while (true)
            {
                long start = begin + Interlocked.Add(ref claimed, chunk) - chunk;
                if (start >= end) break;
                long stop = Math.Min(end, start + chunk);
                if (_watcher != IntPtr.Zero) KernelOverride.NoteExecuting(_watcher);
                try
                {
                    _body(_state, start, stop);
                }
#pragma warning disable CA1031 // Rethrown on the calling thread by ThrowIfFailed; an exception must not reach native code.
                catch (Exception e)
#pragma warning restore CA1031
                {
                    var handle = GCHandle.Alloc(e);
                    if (Interlocked.CompareExchange(ref _failure, GCHandle.ToIntPtr(handle), IntPtr.Zero) != IntPtr.Zero) handle.Free();
                }
                Interlocked.Add(ref _finished, stop - start);
            }
        }
    }

    /// <summary>Whether every item has run (chunks claimed by other threads included).</summary>
    public bool Finished => Volatile.Read(ref _finished) == _count;

    /// <summary>Rethrows, on the caller, the first exception a chunk threw on any thread.</summary>
    public void ThrowIfFailed()
    {
        var failure = Interlocked.Exchange(ref _failure, IntPtr.Zero);
        if (failure == IntPtr.Zero) return;
        var handle = GCHandle.FromIntPtr(failure);
        var e = (Exception)handle.Target!;
        handle.Free();
        throw new AggregateException("A GroupNorm kernel work item failed.", e);
    }

    /// <summary>One claim counter per range, a cache line apart so that threads claiming in their own ranges do not share one.</summary>
    [InlineArray(Capacity * Stride)]
    private struct RangeCounters
    {
        /// <summary>The most ranges a job splits into; more threads than this share ranges.</summary>
        public const int Capacity = 64;

        /// <summary>Counters per cache line: 64 bytes of longs.</summary>
        public const int Stride = 8;

        private long _first;
    }
}
