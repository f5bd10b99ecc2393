using System;
using System.Collections.Generic;
using System.Linq;
using System.Runtime.InteropServices;
using System.Threading;
using GroupNormalization.Kernels;
using GroupNormalization.Kernels.Cpu;
using GroupNormalization.Kernels.Threading;
using GroupNormalization.Tests.Parity;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Kernels.Threading;

/// <summary>
/// The real layer, forward and backward, from every kind of thread its kernels can be called on: .NET
/// threads side by side, a thread other than forward's, and libtorch's own OpenMP threads inside a parallel
/// region; and with libtorch's thread count changed. Results must match a plain single-threaded run.
/// </summary>
public sealed unsafe class LayerThreadingTests
{
    private const long Groups = 8;

    // Large enough to be split across threads (the kernels run small tensors on the caller alone).
    private static readonly long[] Shape = { 4, 32, 24, 24 };

    /// <summary>Forward and all three gradients of one call on float64 inputs, detached from any scope.</summary>
    private sealed record Run(Tensor Y, Tensor Dx, Tensor Dw, Tensor Db);

    private static (Tensor X, Tensor W, Tensor B, Tensor Dy) Inputs(int seed)
    {
        using var scope = torch.NewDisposeScope();
        var generator = new Generator((ulong)seed);
        var x = torch.randn(Shape, ScalarType.Float64, generator: generator);
        var w = torch.rand(32, ScalarType.Float64, generator: generator) + 0.5;
        var b = torch.randn(32, ScalarType.Float64, generator: generator);
        var dy = torch.randn(Shape, ScalarType.Float64, generator: generator);
        return (x.DetachFromDisposeScope(), w.DetachFromDisposeScope(), b.DetachFromDisposeScope(), dy.DetachFromDisposeScope());
    }

    private static Run Compute(Tensor x, Tensor w, Tensor b, Tensor dy, Api api = Api.Functional)
    {
        using var scope = torch.NewDisposeScope();
        var r = Oracle.Ours(KernelPath.Default, x, Groups, w, b, 1e-5, dy, api: api);
        return new Run(r.Y.DetachFromDisposeScope(), r.Dx!.DetachFromDisposeScope(), r.Dweight!.DetachFromDisposeScope(), r.Dbias!.DetachFromDisposeScope());
    }

    private static void AssertSame(Run actual, Run expected, string what)
    {
        // Thread counts change how rows are split, so sums may be added in another order: float64 rounding.
        Assert.Multiple(() =>
        {
            Assert.That(TestTensors.RelativeError(actual.Y, expected.Y), Is.LessThanOrEqualTo(1e-13), $"{what}: y");
            Assert.That(TestTensors.RelativeError(actual.Dx, expected.Dx), Is.LessThanOrEqualTo(1e-13), $"{what}: dx");
            Assert.That(TestTensors.RelativeError(actual.Dw, expected.Dw), Is.LessThanOrEqualTo(1e-13), $"{what}: dweight");
            Assert.That(TestTensors.RelativeError(actual.Db, expected.Db), Is.LessThanOrEqualTo(1e-13), $"{what}: dbias");
        });
    }

    private static void Dispose(Run r)
    {
        r.Y.Dispose();
        r.Dx.Dispose();
        r.Dw.Dispose();
        r.Db.Dispose();
    }

    /// <summary>
    /// Callers on several .NET threads at once, each with its own inputs, through the module or the
    /// functional form: every result (y and all three gradients) must equal that caller's run on one
    /// thread alone. Half the callers force split rows, so that both strategies' scratch memory and merges
    /// run side by side.
    /// </summary>
    [Test]
    public void ConcurrentCallersGetTheirOwnResults([Values] bool openMp, [Values] Api api)
    {
        StrategyParityTests.RequireBackend(openMp);
        const int callers = 4, rounds = 5;
        var inputs = Enumerable.Range(0, callers).Select(Inputs).ToArray();
        Run[] expected;
        using (KernelOverride.Force(strategy: RowStrategy.WholeRows, threads: 1))
            expected = inputs.Select(i => Compute(i.X, i.W, i.B, i.Dy, api)).ToArray();
        var failures = new List<string>();
        var threads = Enumerable.Range(0, callers).Select(k => new Thread(() =>
        {
            try
            {
                using var forced = ParallelForTests.Force(openMp);
                using var split = k % 2 == 1 ? KernelOverride.Force(strategy: RowStrategy.SplitRows, threads: 2) : null;
                for (int round = 0; round < rounds; round++)
                {
                    var actual = Compute(inputs[k].X, inputs[k].W, inputs[k].B, inputs[k].Dy, api);
                    foreach (var (name, error) in Errors(actual, expected[k]))
                    {
                        if (error > 1e-13)
                            lock (failures) failures.Add($"caller {k}, round {round}: {name} differs from its single-threaded run by {error:E2}");
                    }
                    Dispose(actual);
                }
                // Forward and backward each plan once per round; an empty list would mean the forcing did nothing.
                if (split is not null && (split.Plans.Count != 2 * rounds || split.Plans.Any(p => p.Blocks < 2)))
                    lock (failures) failures.Add($"caller {k}: {split.Plans.Count} plans under the forced split, {split.Plans.Count(p => p.Blocks >= 2)} split, expected {2 * rounds} split");
            }
#pragma warning disable CA1031 // Reported through the assertion below, on the test's thread.
            catch (Exception e)
#pragma warning restore CA1031
            {
                lock (failures) failures.Add($"caller {k}: {e}");
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        Assert.That(failures, Is.Empty);
        foreach (var r in expected) Dispose(r);
    }

    private static (string Name, double Error)[] Errors(Run actual, Run expected) => new[]
    {
        ("y", TestTensors.RelativeError(actual.Y, expected.Y)),
        ("dx", TestTensors.RelativeError(actual.Dx, expected.Dx)),
        ("dweight", TestTensors.RelativeError(actual.Dw, expected.Dw)),
        ("dbias", TestTensors.RelativeError(actual.Db, expected.Db)),
    };

    /// <summary>
    /// The parallel runtime really runs a layer's work on as many threads as it is given, on each backend,
    /// one more than the machine has cores: a real forward and backward on forced split rows (at least four
    /// items per thread) must report that count and see that many distinct threads run work items. The
    /// recording holds each thread's first chunk until all have run one (or 5 s pass), so that a caller that
    /// finishes every item before a worker wakes cannot make a working runtime look serial.
    /// </summary>
    [Test]
    public void KernelWorkRunsOnEveryThreadGiven([Values] bool openMp)
    {
        StrategyParityTests.RequireBackend(openMp);
        var (x, w, b, dy) = Inputs(10);
        int caller = Environment.CurrentManagedThreadId;
        int given = Environment.ProcessorCount + 1;
        ParallelForTests.RequireTeamOf(openMp, given);
        IReadOnlyCollection<int> seen;
        IReadOnlyList<WorkPlan> plans;
        using (ParallelForTests.Force(openMp))
        using (var forced = KernelOverride.Force(strategy: RowStrategy.SplitRows, threads: given).WatchThreads(given, TimeSpan.FromSeconds(5)))
        {
            Dispose(Compute(x, w, b, dy));
            Assert.That(forced.LastThreads, Is.EqualTo(given), "threads backward's last loop ran on");
            seen = forced.ExecutingThreads;
            plans = forced.Plans;
        }
        Assert.Multiple(() =>
        {
            Assert.That(plans, Has.Count.EqualTo(2), "forward's and backward's plans");
            Assert.That(plans.Select(p => p.Items), Is.All.GreaterThanOrEqualTo(given), "work items per loop");
            Assert.That(seen, Has.Count.EqualTo(given), "distinct threads that ran work items of a forward and backward");
            Assert.That(seen, Does.Contain(caller), "the caller works too");
        });
        x.Dispose();
        w.Dispose();
        b.Dispose();
        dy.Dispose();
    }

    /// <summary>Backward runs on whichever thread calls it; here not forward's, and with no dispose scope.</summary>
    [Test]
    public void BackwardOnAnotherThreadMatches()
    {
        var (x, w, b, dy) = Inputs(7);
        var expected = Compute(x, w, b, dy);
        using var scope = torch.NewDisposeScope();
        var xl = x.detach().requires_grad_();
        var wl = w.detach().requires_grad_();
        var bl = b.detach().requires_grad_();
        var y = Functional.group_norm(xl, Groups, wl, bl, 1e-5);
        Tensor[]? grads = null;
        var thread = new Thread(() => grads = torch.autograd.grad(new[] { y }, new[] { xl, wl, bl }, new[] { dy }).ToArray());
        thread.Start();
        thread.Join();
        AssertSame(new Run(y, grads![0], grads[1], grads[2]), expected, "backward on another thread");
    }

    /// <summary>
    /// The layer called from inside a parallel region on libtorch's team, once on the caller (thread 0) and
    /// once on an OpenMP worker thread: its loops run serially there, as libtorch's own ops do, and give the
    /// same results.
    /// </summary>
    [Test]
    public void CallsFromInsideAnOpenMpRegionMatch()
    {
        if (!OpenMpTeam.Available) Assert.Ignore(OpenMpTeam.Unavailable!);
        var (x, w, b, dy) = Inputs(8);
        var expected = Compute(x, w, b, dy);
        var call = new RegionCall(x, w, b, dy);
        var handle = GCHandle.Alloc(call);
        try
        {
            OpenMpTeamProbe.RunOnEveryThread(2, &CallFromTeam, (void*)GCHandle.ToIntPtr(handle));
        }
        finally
        {
            handle.Free();
        }
        Assert.That(call.Errors, Is.Empty);
        Assert.That(call.Results.Keys.OrderBy(k => k), Is.EqualTo(Enumerable.Range(0, 2)), "both team threads called the layer");
        foreach (var (thread, result) in call.Results)
        {
            Assert.That(call.ThreadsUsed[thread], Is.EqualTo(1), $"team thread {thread}: a nested loop runs serially");
            AssertSame(result, expected, $"team thread {thread}");
        }
    }

    private sealed class RegionCall
    {
        public RegionCall(Tensor x, Tensor w, Tensor b, Tensor dy) => (X, W, B, Dy) = (x, w, b, dy);

        public Tensor X { get; }

        public Tensor W { get; }

        public Tensor B { get; }

        public Tensor Dy { get; }

        public Dictionary<int, Run> Results { get; } = new();

        public Dictionary<int, int> ThreadsUsed { get; } = new();

        public List<string> Errors { get; } = new();
    }

    private static void CallFromTeam(void* state)
    {
        var call = (RegionCall)GCHandle.FromIntPtr((IntPtr)state).Target!;
        int thread = OpenMpTeamProbe.ThreadNum;
        try
        {
            using var recording = KernelOverride.Force();
            var result = Compute(call.X, call.W, call.B, call.Dy);
            lock (call)
            {
                call.Results[thread] = result;
                call.ThreadsUsed[thread] = recording.LastThreads;
            }
        }
#pragma warning disable CA1031 // Nothing may escape into the OpenMP runtime; the test asserts on the list.
        catch (Exception e)
#pragma warning restore CA1031
        {
            lock (call) call.Errors.Add($"team thread {thread}: {e}");
        }
    }

    /// <summary>torch.set_num_threads decides how many threads the kernels use, as it does for libtorch's ops.</summary>
    [Test]
    public void LibTorchsThreadCountApplies([Values] bool openMp)
    {
        int original = torch.get_num_threads();
        var (x, w, b, dy) = Inputs(9);
        var expected = Compute(x, w, b, dy);
        using var forced = ParallelForTests.Force(openMp);
        try
        {
            foreach (int threads in new[] { 1, 2 })
            {
                torch.set_num_threads(threads);
                using var scope = torch.NewDisposeScope();
                using var noGrad = torch.no_grad();
                var y = Functional.group_norm(x, Groups, w, b, 1e-5);
                Assert.That(forced.LastThreads, Is.EqualTo(threads), $"set_num_threads({threads})");
                Assert.That(TestTensors.RelativeError(y, expected.Y), Is.LessThanOrEqualTo(1e-13));
            }
        }
        finally
        {
            torch.set_num_threads(original);
        }
    }
}
