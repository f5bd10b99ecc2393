using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using GroupNormalization.Autograd;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Autograd;

/// <summary>
/// Double backward through the incoming gradient dy (as a gradient penalty or a Hessian-vector product
/// by forward-over-reverse needs it), with every subset of the first backward's outputs used, and the
/// layout of dx when the backward is recorded.
/// <para>
/// A recorded backward (create_graph) has one implementation whichever kernel family ran forward:
/// <see cref="DifferentiableBackward"/>, which every test here checks was the route taken. What the family
/// changes is where the μ it centres x on comes from (the fused path's float64 host array, the generic
/// path's saved tensor). That shift cancels in every derivative, so the second-order comparisons cannot
/// tell the two apart; <see cref="RecordedBackwardCentresOnTheSavedMean"/> can, at a large mean.
/// </para>
/// </summary>
[TestFixture]
public sealed class DoubleBackwardTests
{
    private const double Eps = 1e-5;
    private const long Groups = 3;
    private static readonly long[] Shape = { 2, 6, 3, 4 };

    /// <summary>Which of dx, dweight and dbias the second-order quantity s uses.</summary>
    private static readonly (string Name, bool Dx, bool Dw, bool Db)[] Uses =
    {
        ("dx+dweight+dbias", true, true, true),
        ("dx", true, false, false),
        ("dweight", false, true, false),
        ("dbias", false, false, true),
    };

    /// <summary>
    /// s = (dx·u).sum() + (dweight·v).sum() + (dbias·t).sum() (or part of it) with the first gradients taken
    /// with create_graph; ∂s/∂dy, ∂s/∂x, ∂s/∂weight and ∂s/∂bias must match libtorch's double backward.
    /// Using only part of the first gradients sends undefined gradients into the recorded backward.
    /// </summary>
    [Test]
    public void DerivativesThroughTheIncomingGradientMatchNative(
        [Values] KernelPath path, [Values(Layout.Contiguous, Layout.ChannelsLast)] Layout layout, [Values] Activation activation)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(41);
        var inputs = Inputs(layout);
        var lines = new List<string>();
        Assert.Multiple(() =>
        {
            foreach (var use in Uses)
            {
                Tensor[] ours;
                BackwardRoute route;
                using (var forced = path.Force())
                {
                    ours = SecondOrderOf((x, w, b) => Functional.group_norm(x, Groups, w, b, Eps, activation), inputs, use);
                    route = forced.LastBackward;
                }
                Assert.That(route, Is.EqualTo(BackwardRoute.Recorded), $"{use.Name}: the first backward's route");
                var native = SecondOrderOf((x, w, b) => Oracle.Activate(torch.nn.functional.group_norm(x, Groups, w, b, Eps), activation), inputs, use);
                for (int i = 0; i < ours.Length; i++)
                {
                    double error = TestTensors.RelativeError(ours[i], native[i]);
                    lines.Add(string.Create(CultureInfo.InvariantCulture, $"{use.Name}: ∂s/∂{Names[i]} {error:E2}"));
                    Assert.That(error, Is.LessThanOrEqualTo(ParityCheck.Float64Tolerance), $"s of {use.Name}: ∂s/∂{Names[i]} against libtorch");
                }
            }
        });
        TestContext.Out.WriteLine(string.Join("\n", lines));
    }

    /// <summary>
    /// ∂s/∂dy against central differences of s, which is linear in dy (so the differences are exact up to
    /// rounding): a check that does not rely on libtorch.
    /// </summary>
    [Test]
    public void DerivativeThroughTheIncomingGradientMatchesFiniteDifferences([Values] KernelPath path, [Values(Activation.None, Activation.SiLU, Activation.GELU)] Activation activation)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(42);
        var shape = new long[] { 2, 4, 3 };
        var x = torch.randn(shape, ScalarType.Float64);
        var w = torch.rand(4, ScalarType.Float64) + 0.5;
        var b = torch.randn(4, ScalarType.Float64);
        var dy = torch.randn(shape, ScalarType.Float64);
        var u = torch.randn(shape, ScalarType.Float64);
        var v = torch.randn(4, ScalarType.Float64);
        var t = torch.randn(4, ScalarType.Float64);
        using var forced = path.Force();

        double S(Tensor dyi, bool record, out Tensor? dyLeaf)
        {
            var xl = x.detach().requires_grad_();
            var wl = w.detach().requires_grad_();
            var bl = b.detach().requires_grad_();
            dyLeaf = record ? dyi.detach().requires_grad_() : null;
            var y = Functional.group_norm(xl, 2, wl, bl, Eps, activation);
            var g = torch.autograd.grad(new[] { y }, new[] { xl, wl, bl }, new[] { dyLeaf ?? dyi }, create_graph: record, retain_graph: record);
            var s = (g[0] * u).sum() + (g[1] * v).sum() + (g[2] * t).sum();
            if (!record) return s.item<double>();
            if (!s.requires_grad)
            {
                dyLeaf = torch.zeros_like(dyi);
                return s.item<double>();
            }
            // allow_unused: a backward that lost dy's graph must fail this test, not end the process.
            var analytic = torch.autograd.grad(new[] { s }, new[] { dyLeaf! }, allow_unused: true)[0];
            dyLeaf = analytic is null || analytic.IsInvalid ? torch.zeros_like(dyi) : analytic;
            return s.item<double>();
        }

        S(dy, record: true, out var ours);
        const double step = 1e-3;
        var numeric = torch.zeros(dy.numel(), ScalarType.Float64);
        var unit = torch.eye(dy.numel(), dtype: ScalarType.Float64);
        for (long i = 0; i < dy.numel(); i++)
        {
            var e = step * unit[i].reshape(shape);
            numeric[i] = (S(dy + e, false, out _) - S(dy - e, false, out _)) / (2 * step);
        }
        double error = TestTensors.ScaledError(ours!.flatten(), numeric, 1.0);
        TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"∂s/∂dy vs finite differences: {error:E2}"));
        // s is linear in dy: the differences carry only the rounding of s, ~1e-16·|s|/step.
        Assert.That(error, Is.LessThanOrEqualTo(1e-9), "∂s/∂dy against central differences");
    }

    /// <summary>
    /// dx of a channels_last input keeps channels_last when backward is recorded (create_graph), as it does
    /// otherwise, and its values match libtorch's; y's layout is checked alongside.
    /// </summary>
    [Test]
    public void RecordedBackwardKeepsTheInputsLayout([Values] KernelPath path, [Values(ScalarType.Float32, ScalarType.Float64)] ScalarType dtype, [Values] bool record)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(43);
        var x = TestTensors.Input(Shape, Layout.ChannelsLast, dtype, torch.CPU);
        var w = torch.rand(Shape[1], dtype) + 0.5;
        var b = torch.randn(Shape[1], dtype);
        var dy = TestTensors.Input(Shape, Layout.ChannelsLast, dtype, torch.CPU);

        Tensor dx;
        BackwardRoute route;
        using (var forced = path.Force())
        {
            var xl = x.detach().requires_grad_();
            var y = Functional.group_norm(xl, Groups, w.detach().requires_grad_(), b, Eps, Activation.SiLU);
            Assert.That(TestTensors.IsChannelsLast(y), Is.True, "y lost the channels_last format");
            dx = torch.autograd.grad(new[] { y }, new[] { xl }, new[] { dy }, create_graph: record, retain_graph: record)[0];
            route = forced.LastBackward;
        }
        Assert.That(route, Is.EqualTo(record ? BackwardRoute.Recorded : BackwardRoute.Kernel), "backward's route");
        var native = Oracle.Native(x, Groups, w, b, Eps, dy, Activation.SiLU);
        double tolerance = dtype == ScalarType.Float64 ? ParityCheck.Float64Tolerance : ParityCheck.Float32Tolerance;
        Assert.Multiple(() =>
        {
            Assert.That(TestTensors.IsChannelsLast(dx), Is.True, $"dx lost the channels_last format (create_graph: {record})");
            Assert.That(TestTensors.RelativeError(dx, native.Dx!), Is.LessThanOrEqualTo(tolerance), "dx against libtorch");
        });
    }

    /// <summary>
    /// The recorded backward centres x on forward's saved μ before taking its own (recorded) statistics, so
    /// that float32 keeps its digits when |μ| ≫ σ: x − μ is exact there. Each kernel family saves μ its own way
    /// and the recorded backward must read it from each. First derivatives under create_graph at mean 1e4,
    /// against float64 on the same values: the bound is <see cref="ParityCheck.Float32Work"/> for x centred
    /// on μ (a few σ from 0, so A ≈ 5). Without the shift, μ's float32 rounding alone moves x̂ by up to
    /// 2^-24·|μ|/σ ≈ 6e-4.
    /// </summary>
    [Test]
    public void RecordedBackwardCentresOnTheSavedMean([Values] KernelPath savedBy, [Values(Activation.None, Activation.SiLU, Activation.GELU)] Activation activation)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(44);
        var shape = new long[] { 4, 32, 16, 16 };
        const long groups = 8;
        var x = torch.randn(shape) + 1e4f;
        var w = torch.rand(32) + 0.5;
        var b = torch.randn(32);
        var dy = torch.randn(shape);
        var exact = Oracle.Native(x.to(ScalarType.Float64), groups, w.to(ScalarType.Float64), b.to(ScalarType.Float64), Eps, dy.to(ScalarType.Float64), activation);

        var xl = x.detach().requires_grad_();
        var wl = w.detach().requires_grad_();
        var bl = b.detach().requires_grad_();
        Tensor[] grads;
        BackwardRoute route;
        using (var forced = savedBy.Force())
        {
            var y = Functional.group_norm(xl, groups, wl, bl, Eps, activation);
            grads = torch.autograd.grad(new[] { y }, new[] { xl, wl, bl }, new[] { dy }, create_graph: true, retain_graph: true).ToArray();
            route = forced.LastBackward;
        }
        var centred = x.to(ScalarType.Float64).reshape(4, groups, -1);
        centred = (centred - centred.mean(new long[] { 2 }, keepdim: true)).reshape(shape);
        double bound = ParityCheck.Float32Work(centred, groups, Eps);
        var errors = new[]
        {
            ("dx", TestTensors.RelativeError(grads[0], exact.Dx!)),
            ("dweight", TestTensors.RelativeError(grads[1], exact.Dweight!)),
            ("dbias", TestTensors.RelativeError(grads[2], exact.Dbias!)),
        };
        TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"bound {bound:E2}: ") +
            string.Join("  ", errors.Select(e => string.Create(CultureInfo.InvariantCulture, $"{e.Item1}={e.Item2:E2}"))));
        Assert.Multiple(() =>
        {
            Assert.That(route, Is.EqualTo(BackwardRoute.Recorded), "backward's route");
            foreach (var (name, error) in errors)
                Assert.That(error, Is.LessThanOrEqualTo(bound), $"{name} vs float64");
        });
    }

    private static readonly string[] Names = { "dy", "x", "weight", "bias" };

    private sealed record SecondOrderInputs(Tensor X, Tensor W, Tensor B, Tensor Dy, Tensor U, Tensor V, Tensor T);

    private static SecondOrderInputs Inputs(Layout layout) => new(
        TestTensors.Input(Shape, layout, ScalarType.Float64, torch.CPU),
        torch.rand(Shape[1], ScalarType.Float64) + 0.5,
        torch.randn(Shape[1], ScalarType.Float64),
        TestTensors.Input(Shape, layout, ScalarType.Float64, torch.CPU),
        torch.randn(Shape, ScalarType.Float64),
        torch.randn(Shape[1], ScalarType.Float64),
        torch.randn(Shape[1], ScalarType.Float64));

    private static Tensor[] SecondOrderOf(Func<Tensor, Tensor, Tensor, Tensor> groupNorm, SecondOrderInputs p, (string Name, bool Dx, bool Dw, bool Db) use) =>
        SecondOrder.Derivatives(groupNorm, p.X, p.W, p.B, p.Dy, use.Dx ? p.U : null, use.Dw ? p.V : null, use.Db ? p.T : null);
}
