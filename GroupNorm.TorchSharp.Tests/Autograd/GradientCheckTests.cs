using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Autograd;

/// <summary>
/// Our analytic derivatives against central finite differences in float64: the full Jacobian of y with
/// respect to x, weight and bias, and for double backward the derivative of (dx·v).sum() with respect to
/// x, weight and bias (which SiLU makes matter), which is also checked against libtorch's own
/// double backward. Each with no activation, SiLU and ReLU; libtorch's side applies its own activation
/// after its group_norm.
/// </summary>
[TestFixture]
public sealed class GradientCheckTests
{
    private const double Eps = 1e-5;

    // Differences of y along each input, for the Jacobian; the tolerances are FiniteDifferences'.
    private const double Step = FiniteDifferences.Step;

    public static IEnumerable<TestCaseData> Cases()
    {
        var cases = new (long[] Shape, long Groups)[]
        {
            (new long[] { 2, 4, 3 }, 2),
            (new long[] { 1, 6, 2, 2 }, 3),
            (new long[] { 2, 3, 2, 1, 2 }, 1),
            (new long[] { 3, 4 }, 2),
            (new long[] { 2, 4, 3, 2 }, 4),
        };
        // ReLU's kink: a finite difference across z = 0 would be wrong, but with these seeds no z lies
        // within a step of 0 (a failure here that names ReLU alone would point to that first).
        foreach (var activation in Oracle.AllActivations)
            foreach (var path in new[] { KernelPath.Default, KernelPath.Generic })
                foreach (var (shape, groups) in cases)
                    yield return new TestCaseData(shape, groups, path, activation)
                        .SetArgDisplayNames($"{(activation == Activation.None ? "" : activation + "_")}{path}_{string.Join("x", shape)}_g{groups}");
    }

    [TestCaseSource(nameof(Cases))]
    public void JacobianMatchesFiniteDifferences(long[] shape, long groups, KernelPath path, Activation activation)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(21);
        var (x, w, b) = Inputs(shape);
        long ny = x.numel();

        // Row j of the Jacobian: the gradient of y[j] (a vector-Jacobian product with a one-hot vector).
        var analytic = torch.zeros(ny, ny + 2 * shape[1], ScalarType.Float64);
        using (path.Force())
        {
            var xl = x.detach().requires_grad_();
            var wl = w.detach().requires_grad_();
            var bl = b.detach().requires_grad_();
            var y = Functional.group_norm(xl, groups, wl, bl, Eps, activation);
            var basis = torch.eye(ny, dtype: ScalarType.Float64);
            for (long j = 0; j < ny; j++)
            {
                var g = torch.autograd.grad(new[] { y }, new[] { xl, wl, bl }, new[] { basis[j].reshape(shape) }, retain_graph: true);
                analytic[j] = torch.cat(g.Select(t => t.flatten()).ToList(), 0);
            }
        }

        // Column i: central difference of y along input i.
        var numeric = torch.zeros(ny, ny + 2 * shape[1], ScalarType.Float64);
        using (torch.no_grad())
        using (path.Force())
        {
            var flat = torch.cat(new[] { x.flatten(), w, b }, 0);
            var unit = torch.eye(flat.numel(), dtype: ScalarType.Float64);
            for (long i = 0; i < flat.numel(); i++)
            {
                var plus = Evaluate(flat + Step * unit[i], shape, groups, activation);
                var minus = Evaluate(flat - Step * unit[i], shape, groups, activation);
                numeric[.., i] = ((plus - minus) / (2 * Step)).flatten();
            }
        }

        double error = FiniteDifferences.Error(analytic, numeric);
        TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"Jacobian: max|analytic − numeric| / max(1, max|numeric|) = {error:E2}"));
        Assert.That(error, Is.LessThanOrEqualTo(FiniteDifferences.Tolerance), "Jacobian of y against central differences");
    }

    /// <summary>
    /// s = (dx·v).sum() with dx = ∂(y·u).sum()/∂x taken with create_graph; ∂s/∂x and ∂s/∂weight must match
    /// central differences of s and libtorch's double backward of the same expression; so must ∂s/∂bias,
    /// which is 0 except through SiLU′(z).
    /// </summary>
    [TestCaseSource(nameof(Cases))]
    public void DoubleBackwardMatchesFiniteDifferencesAndNative(long[] shape, long groups, KernelPath path, Activation activation)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(22);
        var (x, w, b) = Inputs(shape);
        var u = torch.randn(shape, ScalarType.Float64);
        var v = torch.randn(shape, ScalarType.Float64);

        Tensor[] ours;
        using (path.Force())
            ours = SecondOrderOf((xi, wi, bi) => Functional.group_norm(xi, groups, wi, bi, Eps, activation), x, w, b, u, v);
        var native = SecondOrderOf((xi, wi, bi) => Oracle.Activate(torch.nn.functional.group_norm(xi, groups, wi, bi, Eps), activation), x, w, b, u, v);

        // s as a plain number, for differencing: first-order gradient only, no graph kept.
        double S(Tensor xi, Tensor wi, Tensor bi)
        {
            using var inner = torch.NewDisposeScope();
            using var forced = path.Force();
            var xl = xi.detach().requires_grad_();
            var y = Functional.group_norm(xl, groups, wi, bi, Eps, activation);
            var dx = torch.autograd.grad(new[] { (y * u).sum() }, new[] { xl })[0];
            return (dx * v).sum().item<double>();
        }

        var numericX = FiniteDifferences.Gradient(x, xi => S(xi, w, b));
        var numericW = FiniteDifferences.Gradient(w, wi => S(x, wi, b));
        var numericB = FiniteDifferences.Gradient(b, bi => S(x, w, bi));

        // In a group of two elements x̂ = ±σ/√(σ² + ε) depends on x only through ε, so its derivatives are
        // ε/σ² of the terms that form them and carry their rounding σ²/ε times magnified (measured 7e-12
        // against libtorch for 3x4_g2); larger groups compare at the parity bound.
        double conditioning = 1;
        if (x.numel() / (shape[0] * groups) == 2)
            conditioning += x.reshape(shape[0], groups, -1).var(new long[] { 2 }, unbiased: false).max().item<double>() / Eps;
        double nativeTolerance = ParityCheck.Float64Tolerance * conditioning;
        double fdX = FiniteDifferences.Error(ours[0], numericX), fdW = FiniteDifferences.Error(ours[1], numericW);
        double nativeX = TestTensors.RelativeError(ours[0], native[0]), nativeW = TestTensors.RelativeError(ours[1], native[1]);
        TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"d²: vs finite differences x={fdX:E2} w={fdW:E2}; vs libtorch x={nativeX:E2} w={nativeW:E2} (bound {nativeTolerance:E2})"));
        Assert.Multiple(() =>
        {
            double fdB = FiniteDifferences.Error(ours[2], numericB), nativeB = TestTensors.RelativeError(ours[2], native[2]);
            TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"d² bias: vs finite differences {fdB:E2}; vs libtorch {nativeB:E2}"));
            Assert.That(fdB, Is.LessThanOrEqualTo(FiniteDifferences.SecondOrderTolerance), "∂s/∂bias vs finite differences");
            Assert.That(nativeB, Is.LessThanOrEqualTo(nativeTolerance), "∂s/∂bias vs libtorch");
            Assert.That(fdX, Is.LessThanOrEqualTo(FiniteDifferences.SecondOrderTolerance), "∂s/∂x vs finite differences");
            Assert.That(fdW, Is.LessThanOrEqualTo(FiniteDifferences.SecondOrderTolerance), "∂s/∂weight vs finite differences");
            Assert.That(nativeX, Is.LessThanOrEqualTo(nativeTolerance), "∂s/∂x vs libtorch");
            Assert.That(nativeW, Is.LessThanOrEqualTo(nativeTolerance), "∂s/∂weight vs libtorch");
        });
    }

    /// <summary>
    /// Double backward without weight (γ = 1 implicitly) and with weight but no bias, against libtorch's
    /// own (given an explicit all-ones weight where it would have none, see <see cref="Oracle.Native"/>).
    /// </summary>
    [Test]
    public void DoubleBackwardWithoutBiasMatchesNative([Values] KernelPath path, [Values] bool withWeight, [Values] Activation activation)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(23);
        var shape = new long[] { 2, 6, 3, 2 };
        var x = torch.randn(shape, ScalarType.Float64);
        var u = torch.randn(shape, ScalarType.Float64);
        var v = torch.randn(shape, ScalarType.Float64);
        var w = withWeight ? torch.rand(6, ScalarType.Float64) + 0.5 : null;

        Tensor Ours()
        {
            using var forced = path.Force();
            return SecondOrderX(xi => Functional.group_norm(xi, 3, w, null, Eps, activation), x, u, v);
        }
        var native = SecondOrderX(xi => Oracle.Activate(torch.nn.functional.group_norm(xi, 3, w ?? torch.ones(6, ScalarType.Float64), null, Eps), activation), x, u, v);

        double error = TestTensors.RelativeError(Ours(), native);
        TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"d²/dx² vs libtorch: {error:E2}"));
        Assert.That(error, Is.LessThanOrEqualTo(ParityCheck.Float64Tolerance));
    }

    private static Tensor SecondOrderX(Func<Tensor, Tensor> groupNorm, Tensor x, Tensor u, Tensor v)
    {
        var xl = x.detach().requires_grad_();
        var dx = torch.autograd.grad(new[] { (groupNorm(xl) * u).sum() }, new[] { xl }, create_graph: true, retain_graph: true)[0];
        return torch.autograd.grad(new[] { (dx * v).sum() }, new[] { xl })[0];
    }

    /// <summary>∂s/∂x, ∂s/∂weight and ∂s/∂bias for s = (dx·v).sum(), dx the gradient of (y·u).sum().</summary>
    private static Tensor[] SecondOrderOf(Func<Tensor, Tensor, Tensor, Tensor> groupNorm, Tensor x, Tensor w, Tensor b, Tensor u, Tensor v) =>
        SecondOrder.Derivatives(groupNorm, x, w, b, u, v)[1..];

    private static Tensor Evaluate(Tensor flat, long[] shape, long groups, Activation activation)
    {
        long nx = shape.Aggregate(1L, (a, d) => a * d), c = shape[1];
        return Functional.group_norm(flat[..(int)nx].reshape(shape), groups, flat[(int)nx..(int)(nx + c)], flat[(int)(nx + c)..], Eps, activation);
    }

    /// <summary>Weight and bias away from 1 and 0, so that their terms in the derivatives are exercised.</summary>
    private static (Tensor X, Tensor W, Tensor B) Inputs(long[] shape) =>
        (torch.randn(shape, ScalarType.Float64),
         torch.rand(shape[1], ScalarType.Float64) + 0.5,
         torch.randn(shape[1], ScalarType.Float64));

}
