using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics;
using System.Linq;
using System.Runtime.CompilerServices;
using System.Threading;

namespace GroupNormalization.Kernels.Threading;

/// <summary>
/// While one is active, records which managed threads ran chunks of parallel loops (<see cref="ParallelJob"/>),
/// process-wide: a test checks that a loop given several threads really ran on more than one, where
/// <see cref="ParallelFor.LastThreads"/> only says how many were asked for. Off, the loops pay one static read per chunk.
/// </summary>
internal sealed class ExecutingThreads : IDisposable
{
    private static ExecutingThreads? s_active;

    private readonly ConcurrentDictionary<int, byte> _threads = new();
    private readonly long _holdUntil;
    private readonly int _awaited;

    private ExecutingThreads(TimeSpan hold, int awaited)
    {
        _holdUntil = Stopwatch.GetTimestamp() + (long)(hold.TotalSeconds * Stopwatch.Frequency);
        _awaited = awaited;
    }

    /// <summary>
    /// Starts recording; one recording at a time in the process. With a <paramref name="hold"/>, a thread
    /// that runs a chunk waits until <paramref name="threads"/> threads have run one, or until the hold has
    /// passed since the recording started: otherwise a caller that finishes every chunk before a worker
    /// wakes (a small tensor, a loaded machine) would make a working runtime look serial.
    /// </summary>
    public static ExecutingThreads Record(TimeSpan hold = default, int threads = 2)
    {
        var recording = new ExecutingThreads(hold, threads);
        if (Interlocked.CompareExchange(ref s_active, recording, null) is not null)
            throw new InvalidOperationException("Another recording of executing threads is active.");
        return recording;
    }

    /// <summary>The managed thread ids that ran at least one chunk since recording started.</summary>
    public IReadOnlyCollection<int> Threads => _threads.Keys.ToList();

    /// <summary>Notes that the calling thread is running a chunk.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Note()
    {
        var active = Volatile.Read(ref s_active);
        if (active is not null) active.Add();
    }

    private void Add()
    {
        _threads.TryAdd(Environment.CurrentManagedThreadId, 0);
        var spin = new SpinWait();
        while (_threads.Count < _awaited && Stopwatch.GetTimestamp() < _holdUntil) spin.SpinOnce();
    }

    public void Dispose() => Interlocked.CompareExchange(ref s_active, null, this);
}
