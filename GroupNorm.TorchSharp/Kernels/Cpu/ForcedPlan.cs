using System;
using System.Collections.Generic;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>How a forced <see cref="WorkPlan"/> cuts its rows.</summary>
internal enum RowStrategy
{
    /// <summary>Each row start to finish on one thread (one block per row).</summary>
    WholeRows,

    /// <summary>Every row split into several blocks, with the merge between the two phases.</summary>
    SplitRows,
}

/// <summary>
/// Fixes how the fused kernels cut work on this thread until disposed, whatever the shape and the machine:
/// the row strategy, the thread count, or both. Without it, which path runs depends on the number of rows
/// against the cores and on size thresholds, so a small machine running small tests would never split a
/// row. Every plan made under the scope is recorded in <see cref="Plans"/>, so that a test can show the
/// forcing took effect. [ThreadStatic], like <see cref="Threading.ParallelFor.Force"/>: it applies to calls
/// made on this thread, which for CPU tensors includes a backward run from this thread.
/// </summary>
internal sealed class ForcedPlan : IDisposable
{
    [ThreadStatic]
    private static ForcedPlan? t_current;

    private readonly ForcedPlan? _previous;
    private readonly List<WorkPlan> _plans = new();

    private ForcedPlan(RowStrategy? strategy, int? threads)
    {
        if (threads is < 1) throw new ArgumentOutOfRangeException(nameof(threads), threads, "at least one thread");
        Strategy = strategy;
        Threads = threads;
        _previous = t_current;
        t_current = this;
    }

    /// <summary>The scope in force on this thread, or null (the hot path reads only this).</summary>
    internal static ForcedPlan? Current => t_current;

    /// <summary>The strategy every plan uses, or null to choose as usual.</summary>
    public RowStrategy? Strategy { get; }

    /// <summary>The thread count every plan uses (small tensors included), or null for libtorch's.</summary>
    public int? Threads { get; }

    /// <summary>The plans made on this thread under this scope, in order (forward's, then backward's).</summary>
    public IReadOnlyList<WorkPlan> Plans => _plans;

    /// <summary>Forces <paramref name="strategy"/> and/or <paramref name="threads"/> until the scope is disposed.</summary>
    public static ForcedPlan Force(RowStrategy? strategy = null, int? threads = null) => new(strategy, threads);

    internal void Record(WorkPlan plan) => _plans.Add(plan);

    public void Dispose()
    {
        if (t_current != this) throw new InvalidOperationException("Forced plans must be disposed on their own thread, innermost first.");
        t_current = _previous;
    }
}
