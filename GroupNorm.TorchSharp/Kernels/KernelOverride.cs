using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics;
using System.Linq;
using System.Runtime.InteropServices;
using System.Threading;
using GroupNormalization.Autograd;
using GroupNormalization.Kernels.Cpu;
using GroupNormalization.Kernels.Threading;

namespace GroupNormalization.Kernels;

/// <summary>
/// The one way tests and benchmarks steer and observe the kernels: until disposed, calls made on this
/// thread use the given kernel family, parallel backend, row strategy and thread count (each null keeps
/// what an enclosing override, or the normal choice, says), and this object records what they did (so do
/// the overrides it is nested in): the work plans, the threads each parallel loop ran on, the route forward
/// and backward took, and, when asked, which threads ran work items.
/// <para>
/// Without an override, which path runs depends on the input's device, the number of rows against the
/// cores and on size thresholds, so a small machine running small tests would never split a row, and the
/// device-generic path would never run on CPU. The kernels read <see cref="Current"/> (one thread-local
/// read) where they decide; nothing else of this class is on the normal path. Thread-local, so it applies
/// to calls made on this thread, which for CPU tensors includes a backward run from this thread; worker
/// threads see it only through the loop that carries it (<see cref="ParallelJob"/>).
/// </para>
/// </summary>
internal sealed class KernelOverride : IDisposable
{
    [ThreadStatic]
    private static KernelOverride? t_current;

    private readonly KernelOverride? _previous;
    private readonly List<WorkPlan> _plans = new();
    private ConcurrentDictionary<int, byte>? _executing;
    private GCHandle _handle;
    private long _holdUntil;
    private int _awaited;

    private KernelOverride(KernelKind? kernel, ParallelBackend? backend, RowStrategy? strategy, int? threads)
    {
        if (kernel == KernelKind.CpuFused)
            throw new ArgumentException("Only the device-generic path can be forced; the fused path is chosen whenever it applies.", nameof(kernel));
        if (backend == ParallelBackend.OpenMp && !OpenMpTeam.Available)
            throw new InvalidOperationException($"libtorch's OpenMP team cannot be used here: {OpenMpTeam.Unavailable}");
        if (threads is < 1) throw new ArgumentOutOfRangeException(nameof(threads), threads, "at least one thread");
        _previous = t_current;
        Kernel = kernel ?? _previous?.Kernel;
        Backend = backend ?? _previous?.Backend;
        Strategy = strategy ?? _previous?.Strategy;
        Threads = threads ?? _previous?.Threads;
        t_current = this;
    }

    /// <summary>The override in force on this thread, or null (the kernels read only this).</summary>
    internal static KernelOverride? Current => t_current;

    /// <summary>
    /// Forces what is given until the returned override is disposed, and records what calls on this
    /// thread do meanwhile. <c>Force()</c> with nothing given only records.
    /// </summary>
    /// <param name="kernel">Only <see cref="KernelKind.DeviceGeneric"/>: the fused path runs wherever it applies.</param>
    /// <param name="backend">Where parallel loops run; OpenMP only where libtorch's team can be shared.</param>
    /// <param name="strategy">How work plans cut rows (a forced split ignores the size floor).</param>
    /// <param name="threads">The thread count of every plan, small tensors included.</param>
    public static KernelOverride Force(KernelKind? kernel = null, ParallelBackend? backend = null, RowStrategy? strategy = null, int? threads = null) =>
        new(kernel, backend, strategy, threads);

    public KernelKind? Kernel { get; }

    public ParallelBackend? Backend { get; }

    public RowStrategy? Strategy { get; }

    public int? Threads { get; }

    /// <summary>The plans made on this thread under this override, in order (forward's, then backward's).</summary>
    public IReadOnlyList<WorkPlan> Plans => _plans;

    /// <summary>
    /// How many threads the last parallel loop on this thread ran on, the caller included (1: the caller
    /// alone), as the backend started them: after every cap, not the count asked for. 0 before any loop.
    /// </summary>
    public int LastThreads { get; private set; }

    /// <summary>Which way the last forward on this thread went.</summary>
    public ForwardRoute LastForward { get; private set; }

    /// <summary>Which way the last backward on this thread went.</summary>
    public BackwardRoute LastBackward { get; private set; }

    /// <summary>The managed ids of the threads that ran work items of this thread's loops, once <see cref="WatchThreads"/> is on.</summary>
    public IReadOnlyCollection<int> ExecutingThreads => _executing?.Keys.ToList() ?? (IReadOnlyCollection<int>)Array.Empty<int>();

    /// <summary>
    /// Records which threads run work items of loops started on this thread. A thread that runs an item
    /// waits until <paramref name="threads"/> threads have run one, or until <paramref name="hold"/> has
    /// passed since this call: otherwise a caller that finishes every item before a worker wakes (a small
    /// tensor, a loaded machine) would make a working runtime look serial.
    /// </summary>
    public KernelOverride WatchThreads(int threads, TimeSpan hold)
    {
        _executing = new ConcurrentDictionary<int, byte>();
        _awaited = threads;
        _holdUntil = Stopwatch.GetTimestamp() + (long)(hold.TotalSeconds * Stopwatch.Frequency);
        if (!_handle.IsAllocated) _handle = GCHandle.Alloc(this);
        return this;
    }

    /// <summary>What a loop started on this thread carries to its work items (zero: nothing to record).</summary>
    internal IntPtr Watcher => _executing is not null ? GCHandle.ToIntPtr(_handle) : _previous?.Watcher ?? IntPtr.Zero;

    /// <summary>Called by a work item's thread with the loop's <see cref="Watcher"/>.</summary>
    internal static void NoteExecuting(IntPtr watcher)
    {
        var o = (KernelOverride)GCHandle.FromIntPtr(watcher).Target!;
        o._executing!.TryAdd(Environment.CurrentManagedThreadId, 0);
        var spin = new SpinWait();
        while (o._executing.Count < o._awaited && Stopwatch.GetTimestamp() < o._holdUntil) spin.SpinOnce();
    }

    // Records go to every enclosing override too: a call under a nested one is also under the outer one.

    internal void Record(WorkPlan plan)
    {
        for (var o = this; o is not null; o = o._previous) o._plans.Add(plan);
    }

    internal void RecordThreads(int threads)
    {
        for (var o = this; o is not null; o = o._previous) o.LastThreads = threads;
    }

    internal void Record(ForwardRoute route)
    {
        for (var o = this; o is not null; o = o._previous) o.LastForward = route;
    }

    internal void Record(BackwardRoute route)
    {
        for (var o = this; o is not null; o = o._previous) o.LastBackward = route;
    }

    public void Dispose()
    {
        if (t_current != this) throw new InvalidOperationException("Kernel overrides must be disposed on their own thread, innermost first.");
        t_current = _previous;
        if (_handle.IsAllocated) _handle.Free();
    }
}
