using System;
using System.Runtime.InteropServices;
using System.Threading;

namespace GroupNormalization.Kernels.Threading;

/// <summary>
/// One parallel loop over items [0, count): every thread that joins calls <see cref="Work"/>, which claims
/// chunks of items from a shared counter and runs <c>body(state, start, end)</c> on each, until none is
/// left. Claiming instead of a fixed split means a thread that starts late (descheduled, or still busy
/// with libtorch's previous op) finds less to do instead of stalling everyone else.
/// <para>
/// An unmanaged struct with a function-pointer body, so that a kernel call allocates nothing on the managed
/// heap: on the OpenMP path it lives on the caller's stack for the whole region.
/// </para>
/// </summary>
internal unsafe struct ParallelJob
{
    /// <summary>Chunks per thread: small enough to rebalance when a thread starts late, large enough that claiming is free.</summary>
    private const int ChunksPerThread = 8;

    private readonly delegate*<void*, long, long, void> _body;
    private readonly void* _state;
    private readonly long _count;
    private readonly long _chunk;
    private long _claimed;
    private long _finished;

    // A GCHandle to the first exception a chunk threw, or zero: a managed reference cannot live in an
    // unmanaged struct, and the happy path must not allocate.
    private IntPtr _failure;

    public ParallelJob(long count, int threads, delegate*<void*, long, long, void> body, void* state)
    {
        _body = body;
        _state = state;
        _count = count;
        _chunk = Math.Max(1, count / (threads * (long)ChunksPerThread));
    }

    public readonly long Count => _count;

    /// <summary>Claims and runs chunks until none is left. Never throws: it may run under native code.</summary>
    public void Work()
    {
        while (true)
        {
            long start = Interlocked.Add(ref _claimed, _chunk) - _chunk;
            if (start >= _count) return;
            long end = Math.Min(_count, start + _chunk);
            try
            {
                _body(_state, start, end);
            }
#pragma warning disable CA1031 // Rethrown on the calling thread by ThrowIfFailed; an exception must not reach native code.
            catch (Exception e)
#pragma warning restore CA1031
            {
                var handle = GCHandle.Alloc(e);
                if (Interlocked.CompareExchange(ref _failure, GCHandle.ToIntPtr(handle), IntPtr.Zero) != IntPtr.Zero) handle.Free();
            }
            Interlocked.Add(ref _finished, end - start);
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
}
