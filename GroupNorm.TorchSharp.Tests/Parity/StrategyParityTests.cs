using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using GroupNormalization.Kernels;
using GroupNormalization.Kernels.Cpu;
using GroupNormalization.Kernels.Threading;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Parity;

/// <summary>
/// The fused kernels' work split, forced: the parity sweep through whole rows and split rows (block
/// reductions, the merge of moments or sums, block outputs), on libtorch's OpenMP team and on our own
/// threads, with a thread count of 3 (more than a small CI machine's cores, and odd) and a split on one
/// thread. Left alone, which strategy runs depends on rows against cores and on size thresholds, so on a
/// 2-core machine almost no case of the sweep would split a row.
/// </summary>
[TestFixture]
public sealed class StrategyParityTests
{
    private const double Eps = 1e-5;

    /// <summary>The thread count of the multi-threaded configurations.</summary>
    private const int Threads = 3;

    /// <summary>One forced configuration: backend (irrelevant on one thread: the caller runs every item), strategy, threads.</summary>
    public sealed record Config(bool OpenMp, bool Split, int Threads)
    {
        public override string ToString() =>
            $"{(Threads == 1 ? "caller" : OpenMp ? "OpenMP" : "own threads")}, {(Split ? "split" : "whole")} rows, {Threads} thread{(Threads == 1 ? "" : "s")}";

        /// <summary>Forces this configuration on the calling thread until disposed.</summary>
        internal KernelOverride Force() => KernelOverride.Force(
            backend: OpenMp ? ParallelBackend.OpenMp : ParallelBackend.KernelThreads,
            strategy: Split ? RowStrategy.SplitRows : RowStrategy.WholeRows,
            threads: Threads);
    }

    private static readonly Config[] s_configs =
    {
        new(OpenMp: true, Split: false, Threads),
        new(OpenMp: true, Split: true, Threads),
        new(OpenMp: false, Split: false, Threads),
        new(OpenMp: false, Split: true, Threads),
        new(OpenMp: false, Split: true, 1),
    };

    /// <summary>Ignores a test of libtorch's OpenMP team where the team cannot be shared (its fallback is tested anyway).</summary>
    internal static void RequireBackend(bool openMp)
    {
        if (openMp && !OpenMpTeam.Available) Assert.Ignore(OpenMpTeam.Unavailable!);
    }

    public static IEnumerable<TestCaseData> SweepCases()
    {
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.Float64 })
            foreach (var c in ParityCase.Sweep)
                yield return new TestCaseData(c, dtype).SetArgDisplayNames($"{ParityTests.DtypeName(dtype)}_{c.Name}");
    }

    /// <summary>
    /// Every sweep case in every configuration against one native result: y, dx, dweight, dbias, and the
    /// layout of y and dx. Each configuration must have planned forward and backward as forced.
    /// </summary>
    [TestCaseSource(nameof(SweepCases))]
    public void EveryStrategyMatchesNativeGroupNorm(ParityCase c, ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(c.Name.Length * 31 + c.Shape.Sum(s => (int)s));
        var x = TestTensors.Input(c.Shape, c.Layout, dtype, torch.CPU);
        var (w, b) = TestTensors.Parameters(c.Affine, c.Shape[1], dtype, torch.CPU);
        var dy = torch.randn(c.Shape, dtype);
        var expected = Oracle.Native(x, c.Groups, w, b, Eps, dy);
        double tolerance = dtype == ScalarType.Float64 ? ParityCheck.Float64Tolerance : ParityCheck.Float32Tolerance;

        var lines = new List<string>();
        Assert.Multiple(() =>
        {
            foreach (var config in s_configs)
            {
                if (config.OpenMp && !OpenMpTeam.Available)
                {
                    lines.Add($"{config}: skipped, {OpenMpTeam.Unavailable}");
                    continue;
                }
                GroupNormResult actual;
                IReadOnlyList<WorkPlan> plans;
                int lastThreads;
                using (var forced = config.Force())
                {
                    actual = Oracle.Ours(KernelPath.Default, x, c.Groups, w, b, Eps, dy);
                    plans = forced.Plans;
                    lastThreads = forced.LastThreads;
                }
                AssertPlans(plans, 2, config, $"{config}: forward and backward");
                if (plans.Count == 2)
                    Assert.That(lastThreads, Is.EqualTo((int)Math.Min(Math.Min(config.Threads, plans[1].Items), config.OpenMp ? OpenMpTeamProbe.ThreadLimit : int.MaxValue)),
                        $"{config}: threads backward's last loop ran on");

                var errors = ParityCheck.Errors(actual, expected);
                lines.Add($"{config}: " + string.Join("  ", errors.Select(e => string.Create(CultureInfo.InvariantCulture, $"{e.Name}={e.Error:E2}"))));
                foreach (var (name, error) in errors)
                {
                    ParityReport.Record($"CPU {config}", KernelPath.Default, dtype, name, error);
                    Assert.That(error, Is.LessThanOrEqualTo(tolerance), $"{config}: {name}, relative error against libtorch");
                }
                Assert.That(actual.Y.dtype, Is.EqualTo(dtype), $"{config}: y dtype");
                ParityCheck.AssertLayout(actual, c.Layout, $"{config}: ");
            }
        });
        TestContext.Out.WriteLine(string.Join("\n", lines));
    }

    /// <summary>
    /// Backward with x not requiring grad: the split backward stops after the merged sums (no dx pass), and
    /// dweight and dbias come from those sums alone. Both layouts, with and without a fused activation
    /// (whose backward otherwise stashes z in dx's memory).
    /// </summary>
    [Test]
    public void ParameterGradientsAloneMatchUnderForcedSplit([Values] bool openMp, [Values] bool channelsLast,
        [Values(ScalarType.Float32, ScalarType.Float64)] ScalarType dtype, [Values(Activation.None, Activation.SiLU, Activation.GELU)] Activation activation)
    {
        RequireBackend(openMp);
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(17);
        var shape = new long[] { 2, 12, 5, 7 };
        var x = TestTensors.Input(shape, channelsLast ? Layout.ChannelsLast : Layout.Contiguous, dtype, torch.CPU);
        var (w, b) = TestTensors.Parameters(Affine.Both, shape[1], dtype, torch.CPU);
        var dy = torch.randn(shape, dtype);
        var expected = Oracle.Native(x, 3, w, b, Eps, dy, activation);

        var config = new Config(openMp, Split: true, Threads);
        var wl = w!.detach().requires_grad_();
        var bl = b!.detach().requires_grad_();
        Tensor[] grads;
        IReadOnlyList<WorkPlan> plans;
        using (var forced = config.Force())
        {
            var y = Functional.group_norm(x.detach(), 3, wl, bl, Eps, activation);
            grads = torch.autograd.grad(new[] { y }, new[] { wl, bl }, new[] { dy }).ToArray();
            plans = forced.Plans;
        }
        double tolerance = dtype == ScalarType.Float64 ? ParityCheck.Float64Tolerance : ParityCheck.Float32Tolerance;
        Assert.Multiple(() =>
        {
            AssertPlans(plans, 2, config, "forward and backward");
            Assert.That(TestTensors.RelativeError(grads[0], expected.Dweight!), Is.LessThanOrEqualTo(tolerance), "dweight against libtorch");
            Assert.That(TestTensors.RelativeError(grads[1], expected.Dbias!), Is.LessThanOrEqualTo(tolerance), "dbias against libtorch");
        });
        foreach (var g in grads) g.Dispose();
    }

    /// <summary>
    /// The plans made under <paramref name="config"/>: <paramref name="count"/> of them, each with the forced
    /// thread count and one block per row (whole) or more (split, every test row being longer than one).
    /// </summary>
    internal static void AssertPlans(IReadOnlyList<WorkPlan> plans, int count, Config config, string what)
    {
        Assert.That(plans, Has.Count.EqualTo(count), $"{what}: plans made under the forced scope");
        foreach (var plan in plans)
        {
            Assert.That(plan.Threads, Is.EqualTo(config.Threads), $"{what}: forced thread count of {plan}");
            if (config.Split)
                Assert.That(plan.Blocks, Is.InRange(2, Math.Max(2, plan.RowLength)), $"{what}: blocks per row of {plan}");
            else
                Assert.That(plan.Blocks, Is.EqualTo(1), $"{what}: blocks per row of {plan}");
        }
    }
}
