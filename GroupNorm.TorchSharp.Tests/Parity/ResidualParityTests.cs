using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using GroupNormalization.Autograd;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Parity;

/// <summary>
/// GroupNorm + residual + activation in one call, act(GroupNorm(x) + r), against libtorch's group_norm,
/// then <c>+ r</c>, then its own silu or relu: y, dx, dweight, dbias and dr, in all four floating dtypes,
/// both kernel families, both entry points, ranks 2–5, contiguous and channels_last (and a residual whose
/// layout differs from x's); rows split into blocks on 3 threads; a residual that alone needs a gradient;
/// double backward; and the malformed residuals the public boundary must reject.
/// </summary>
[TestFixture]
public sealed class ResidualParityTests
{
    private const double Eps = 1e-5;

    /// <summary>
    /// The residual's layout: x's own, or the other dense one (the kernel copies it into x's), and whether
    /// it requires a gradient.
    /// </summary>
    public enum ResidualKind
    {
        SameLayout,
        OtherLayout,
        NoGradient,
    }

    private static readonly (ParityCase Case, Api Api, ResidualKind Residual)[] s_cases =
    {
        (new(new long[] { 8, 24 }, 3), Api.Functional, ResidualKind.SameLayout),
        (new(new long[] { 2, 6, 9 }, 3, Affine.None), Api.Module, ResidualKind.SameLayout),
        (new(new long[] { 2, 8, 5, 7 }, 4), Api.Module, ResidualKind.SameLayout),
        (new(new long[] { 2, 8, 5, 7 }, 4, Layout: Layout.ChannelsLast), Api.Functional, ResidualKind.SameLayout),
        (new(new long[] { 2, 8, 5, 7 }, 2, Layout: Layout.ChannelsLast), Api.Module, ResidualKind.OtherLayout),
        (new(new long[] { 2, 8, 5, 7 }, 2), Api.Functional, ResidualKind.OtherLayout),
        (new(new long[] { 2, 6, 3, 4, 5 }, 3, Layout: Layout.ChannelsLast), Api.Functional, ResidualKind.SameLayout),
        (new(new long[] { 2, 6, 9 }, 3, Affine.BiasOnly), Api.Functional, ResidualKind.NoGradient),
        // 8×8 planes of whole vector pairs: the forward's one-loop-per-row path for small planes.
        (new(new long[] { 2, 16, 8, 8 }, 4), Api.Module, ResidualKind.SameLayout),
        // One sample of large rows: split into blocks on more than one thread, not aligned to planes.
        (new(new long[] { 1, 4, 96, 96 }, 2), Api.Functional, ResidualKind.SameLayout),
        (new(new long[] { 1, 64, 24, 24 }, 8, Layout: Layout.ChannelsLast), Api.Functional, ResidualKind.SameLayout),
    };

    private static readonly ScalarType[] s_dtypes = { ScalarType.Float32, ScalarType.Float64, ScalarType.Float16, ScalarType.BFloat16 };
    private static readonly Activation[] s_activations = Oracle.AllActivations;
    private static readonly KernelPath[] s_paths = { KernelPath.Default, KernelPath.Generic };

    public static IEnumerable<TestCaseData> Cases()
    {
        foreach (var activation in s_activations)
            foreach (var dtype in s_dtypes)
                foreach (var path in s_paths)
                    foreach (var (c, api, residual) in s_cases)
                        yield return new TestCaseData(c, api, residual, dtype, path, activation)
                            .SetArgDisplayNames($"{activation}_{path}_{ParityTests.DtypeName(dtype)}_{api}_{residual}_{c.Name}");
    }

    [TestCaseSource(nameof(Cases))]
    public void MatchesNativeGroupNormAddActivation(ParityCase c, Api api, ResidualKind residual, ScalarType dtype, KernelPath path, Activation activation) =>
        Check(c, api, residual, dtype, path, activation);

    public static IEnumerable<TestCaseData> ForcedSplitCases()
    {
        foreach (var activation in s_activations)
            foreach (var dtype in new[] { ScalarType.Float32, ScalarType.Float64 })
                foreach (bool openMp in new[] { true, false })
                    foreach (var (c, api, residual) in s_cases)
                        yield return new TestCaseData(c, api, residual, dtype, openMp, activation)
                            .SetArgDisplayNames($"{activation}_{(openMp ? "OpenMP" : "OwnThreads")}_{ParityTests.DtypeName(dtype)}_{api}_{residual}_{c.Name}");
    }

    /// <summary>Every row forced into blocks on 3 threads: the residual in the block loops of both directions.</summary>
    [TestCaseSource(nameof(ForcedSplitCases))]
    public void MatchesNativeWithRowsSplit(ParityCase c, Api api, ResidualKind residual, ScalarType dtype, bool openMp, Activation activation)
    {
        StrategyParityTests.RequireBackend(openMp);
        var config = new StrategyParityTests.Config(openMp, Split: true, Threads: 3);
        using var forced = config.Force();
        Check(c, api, residual, dtype, KernelPath.Default, activation);
        StrategyParityTests.AssertPlans(forced.Plans, 3, config, "forward, backward and the no-graph forward");
    }

    /// <summary>
    /// Only the residual requires a gradient (x, weight and bias are constants): the kernels produce dr alone,
    /// the case where the fused backward skips its input-gradient pass.
    /// </summary>
    [Test]
    public void ResidualAloneGetsItsGradient([Values] KernelPath path, [Values] Activation activation,
        [Values(Layout.Contiguous, Layout.ChannelsLast)] Layout layout)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(5);
        var shape = new long[] { 2, 8, 6, 6 };
        var x = TestTensors.Input(shape, layout, ScalarType.Float32, torch.CPU);
        var r = torch.randn(shape).requires_grad_();
        var dy = torch.randn(shape);
        var (w, b) = TestTensors.Parameters(Affine.Both, shape[1], ScalarType.Float32, torch.CPU);

        Tensor ours;
        using (var forced = path.Force())
        {
            var y = Functional.group_norm(x, 4, w, b, Eps, activation, r);
            Assert.That(forced.LastForward, Is.EqualTo(ForwardRoute.Graph), "a residual that requires grad needs a graph node");
            ours = torch.autograd.grad(new[] { y }, new[] { r }, new[] { dy })[0];
        }
        var expected = Oracle.Native(x, 4, w, b, Eps, dy, activation, r).Dresidual!;
        Assert.That(TestTensors.RelativeError(ours, expected), Is.LessThanOrEqualTo(ParityCheck.Float32Tolerance), "dr against libtorch");
    }

    /// <summary>
    /// With the backward recorded (create_graph): s = Σ dx·u + Σ dr·q, and ∂s/∂(dy, x, weight, bias, r) must
    /// match libtorch's composite. ReLU is piecewise linear, so its mask is all the second derivative sees of r.
    /// </summary>
    [Test]
    public void DoubleBackwardMatchesNative([Values] KernelPath path, [Values] Activation activation,
        [Values(Layout.Contiguous, Layout.ChannelsLast)] Layout layout)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(43);
        var shape = new long[] { 2, 6, 3, 4 };
        var x = TestTensors.Input(shape, layout, ScalarType.Float64, torch.CPU);
        var r = torch.randn(shape, ScalarType.Float64);
        var dy = torch.randn(shape, ScalarType.Float64);
        var (w, b) = TestTensors.Parameters(Affine.Both, shape[1], ScalarType.Float64, torch.CPU);
        var u = torch.randn(shape, ScalarType.Float64);
        var q = torch.randn(shape, ScalarType.Float64);

        Tensor[] ours;
        using (var forced = path.Force())
        {
            ours = Second((xl, wl, bl, rl) => Functional.group_norm(xl, 3, wl, bl, Eps, activation, rl));
            Assert.That(forced.LastBackward, Is.EqualTo(BackwardRoute.Recorded), "the first backward was recorded");
        }
        var expected = Second((xl, wl, bl, rl) =>
            Oracle.Activate(torch.nn.functional.group_norm(xl, 3, wl, bl, Eps) + rl, activation));

        string[] names = { "d/ddy", "d/dx", "d/dweight", "d/dbias", "d/dr" };
        Assert.Multiple(() =>
        {
            for (int i = 0; i < names.Length; i++)
                Assert.That(TestTensors.ScaledError(ours[i], expected[i], 1), Is.LessThanOrEqualTo(1e-10), names[i]);
        });

        Tensor[] Second(Func<Tensor, Tensor, Tensor, Tensor, Tensor> f)
        {
            var leaves = new[] { dy, x, w!, b!, r }.Select(t => t.detach().requires_grad_()).ToArray();
            var y = f(leaves[1], leaves[2], leaves[3], leaves[4]);
            var first = torch.autograd.grad(new[] { y }, new[] { leaves[1], leaves[4] }, new[] { leaves[0] }, create_graph: true, retain_graph: true);
            var s = (first[0] * u).sum() + (first[1] * q).sum();
            var second = torch.autograd.grad(new[] { s }, leaves, allow_unused: true);
            return second.Select((g, i) => g is null || g.IsInvalid ? torch.zeros_like(leaves[i]) : g).ToArray();
        }
    }

    /// <summary>A null residual is the plain call, bit for bit, through both entry points.</summary>
    [Test]
    public void NullResidualIsThePlainCall([Values] Activation activation)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(3);
        var x = torch.randn(2, 8, 5, 5);
        using var module = new GroupNorm(4, 8, activation: activation);
        using (torch.no_grad())
        {
            Assert.That(TestTensors.Identical(module.forward(x, null), module.forward(x)), Is.True, "module");
            Assert.That(TestTensors.Identical(Functional.group_norm(x, 4, activation: activation, residual: null),
                Functional.group_norm(x, 4, activation: activation)), Is.True, "functional");
        }
    }

    [Test]
    public void RejectsResidualOfAnotherShape([Values(new long[] { 2, 8, 5, 4 }, new long[] { 1, 8, 5, 5 }, new long[] { 8, 5, 5 }, new long[] { 2, 8, 25 })] long[] shape)
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(2, 8, 5, 5);
        var r = torch.randn(shape);
        AssertRejected(() => Functional.group_norm(x, 4, residual: r), "[2, 8, 5, 5]", $"[{string.Join(", ", shape)}]");
        using var module = new GroupNorm(4, 8, activation: Activation.ReLU);
        AssertRejected(() => module.forward(x, r), "[2, 8, 5, 5]");
    }

    [Test]
    public void RejectsResidualOfAnotherDtype([Values(ScalarType.Float64, ScalarType.Float16, ScalarType.Int32)] ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(2, 8, 5, 5);
        var r = torch.zeros(new long[] { 2, 8, 5, 5 }, dtype);
        AssertRejected(() => Functional.group_norm(x, 4, activation: Activation.SiLU, residual: r), "Float32", $"dtype {dtype}");
    }

    /// <summary>The meta device holds shapes without data, so a second device exists without CUDA.</summary>
    [Test]
    public void RejectsResidualOnAnotherDevice()
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(2, 8, 5, 5);
        var r = torch.empty(new long[] { 2, 8, 5, 5 }, device: torch.META);
        AssertRejected(() => Functional.group_norm(x, 4, residual: r), "residual on meta", "(cpu)");
    }

    [Test]
    public void RejectsDisposedResidual()
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(2, 8, 5, 5);
        var r = torch.randn(2, 8, 5, 5);
        r.Dispose();
        AssertRejected(() => Functional.group_norm(x, 4, residual: r), "disposed");
    }

    private static void AssertRejected(Action call, params string[] fragments)
    {
        var e = (ArgumentException)Assert.Throws(Is.InstanceOf<ArgumentException>(), call)!;
        Assert.Multiple(() =>
        {
            Assert.That(e.ParamName, Is.EqualTo("residual"));
            foreach (var fragment in fragments) Assert.That(e.Message, Does.Contain(fragment));
        });
    }

    private static void Check(ParityCase c, Api api, ResidualKind kind, ScalarType dtype, KernelPath path, Activation activation)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(c.Name.Length * 41 + c.Shape.Sum(s => (int)s) + (int)activation);
        bool half = dtype is ScalarType.Float16 or ScalarType.BFloat16;
        var draw = half ? ScalarType.Float32 : dtype;
        // Half values are drawn in float32 and rounded once, so that the float64 reference sees exactly them.
        var x = TestTensors.Input(c.Shape, c.Layout, draw, torch.CPU).to(dtype);
        var residualLayout = kind == ResidualKind.OtherLayout
            ? (c.Layout == Layout.ChannelsLast ? Layout.Contiguous : Layout.ChannelsLast)
            : c.Layout;
        var r = TestTensors.Input(c.Shape, residualLayout, draw, torch.CPU).to(dtype).requires_grad_(kind != ResidualKind.NoGradient);
        var dy = torch.randn(c.Shape, draw).to(dtype);
        var (w, b) = TestTensors.Parameters(c.Affine, c.Shape[1], dtype, torch.CPU);

        var actual = Oracle.Ours(path, x, c.Groups, w, b, Eps, dy, activation, api, r);
        GroupNormResult inferred;
        using (torch.no_grad())
            inferred = Oracle.Ours(path, x, c.Groups, w, b, Eps, null, activation, api, r);
        string label = $"CPU residual {activation}";

        double inferenceTolerance;
        if (half)
        {
            var builtIn = Oracle.Native(x, c.Groups, w, b, Eps, dy, activation, r);
            var exact = Oracle.Native(x.to(ScalarType.Float64), c.Groups, w?.to(ScalarType.Float64), b?.to(ScalarType.Float64), Eps,
                dy.to(ScalarType.Float64), activation, r.detach().to(ScalarType.Float64).requires_grad_(r.requires_grad));
            AssertNoWorseThanBuiltIn(actual, builtIn, exact, dtype);
            inferenceTolerance = ParityCheck.UnitRoundoff(dtype);
        }
        else
        {
            var expected = Oracle.Native(x, c.Groups, w, b, Eps, dy, activation, r);
            inferenceTolerance = dtype == ScalarType.Float64 ? ParityCheck.Float64Tolerance : ParityCheck.Float32Tolerance;
            ParityCheck.AssertClose(actual, expected, inferenceTolerance, label, path, dtype);
        }

        Assert.Multiple(() =>
        {
            Assert.That(actual.Forward, Is.EqualTo(ForwardRoute.Graph), "forward recorded a graph node");
            Assert.That(TestTensors.RelativeError(inferred.Y, actual.Y), Is.LessThanOrEqualTo(inferenceTolerance), "y under no_grad vs y with a graph");
            Assert.That(actual.Y.dtype, Is.EqualTo(dtype), "y dtype");
            Assert.That(actual.Dresidual is null, Is.EqualTo(kind == ResidualKind.NoGradient), "dr given exactly when asked for");
            if (actual.Dresidual is not null)
            {
                Assert.That(actual.Dresidual.dtype, Is.EqualTo(dtype), "dr dtype");
                Assert.That(actual.Dresidual.shape, Is.EqualTo(c.Shape), "dr shape");
            }
            ParityCheck.AssertLayout(actual, c.Layout, "");
            if (c.Layout == Layout.ChannelsLast) Assert.That(TestTensors.IsChannelsLast(inferred.Y), Is.True, "y under no_grad lost the channels_last format");
        });
    }

    /// <summary>
    /// As <c>ActivationParityTests</c> judges half precision: each output's error against the float64
    /// composite must be within twice the built-in half composite's, or within two roundings to the dtype.
    /// Ours adds the residual in float32 and rounds once; the built-in rounds GroupNorm's output, the sum and
    /// the activation each to the dtype.
    /// </summary>
    private static void AssertNoWorseThanBuiltIn(GroupNormResult actual, GroupNormResult builtIn, GroupNormResult exact, ScalarType dtype)
    {
        var outputs = new (string Name, Tensor? Ours, Tensor? BuiltIn, Tensor? Exact)[]
        {
            ("y", actual.Y, builtIn.Y, exact.Y),
            ("dx", actual.Dx, builtIn.Dx, exact.Dx),
            ("dweight", actual.Dweight, builtIn.Dweight, exact.Dweight),
            ("dbias", actual.Dbias, builtIn.Dbias, exact.Dbias),
            ("dresidual", actual.Dresidual, builtIn.Dresidual, exact.Dresidual),
        };
        double floor = 2 * ParityCheck.UnitRoundoff(dtype);
        var lines = new List<string>();
        Assert.Multiple(() =>
        {
            foreach (var (name, ours, native, reference) in outputs)
            {
                if (reference is null) continue;
                Assert.That(ours, Is.Not.Null, $"{name} missing");
                Assert.That(ours!.dtype, Is.EqualTo(native!.dtype), $"{name} dtype");
                double oursError = TestTensors.RelativeError(ours, reference);
                double nativeError = TestTensors.RelativeError(native, reference);
                lines.Add(string.Create(CultureInfo.InvariantCulture, $"{name}: ours {oursError:E2}, built-in {nativeError:E2}"));
                Assert.That(oursError, Is.LessThanOrEqualTo(Math.Max(2 * nativeError, floor)), $"{name}: error against float64 (built-in {nativeError:E2})");
            }
        });
        TestContext.Out.WriteLine(string.Join("  ", lines));
    }
}
