using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Parity;

/// <summary>
/// Groups of one or two elements. With one element the variance is 0: y = β, and dx and dweight are 0
/// in exact arithmetic, so a kernel that rounds its coefficients separately returns cancellation noise
/// (libtorch may; ours must not, see <see cref="OneElementGroupsGiveExactAnswers"/>). With two, dx carries the
/// factor 1 − x̂² = eps / (σ² + eps), a cancellation of two numbers near 1. Errors here are measured
/// against the size of the terms that cancel (|x|·r·|γ| for y, r·|γ|·|dy| for dx,
/// N·S·|dy|·|x|·r for dweight), which is where the rounding of either side lives.
/// </summary>
[TestFixture]
public sealed class DegenerateGroupTests
{
    private const double Eps = 1e-5;

    public static IEnumerable<TestCaseData> Cases()
    {
        var cases = new ParityCase[]
        {
            new(new long[] { 3, 1, 1, 1, 2 }, 1), // PyTorch's own suite shape: two elements per group.
            new(new long[] { 8, 6 }, 3),
            new(new long[] { 2, 64 }, 64),
            new(new long[] { 2, 3, 1, 1 }, 3),
        };
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.Float64 })
            foreach (var path in new[] { KernelPath.Default, KernelPath.Generic })
                foreach (var c in cases)
                    yield return new TestCaseData(c, dtype, path).SetArgDisplayNames($"{path}_{ParityTests.DtypeName(dtype)}_{c.Name}");
    }

    [TestCaseSource(nameof(Cases))]
    public void MatchesNativeToTheScaleOfTheCancelledTerms(ParityCase c, ScalarType dtype, KernelPath path)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(3);
        var x = torch.randn(c.Shape, dtype);
        var (w, b) = TestTensors.Parameters(c.Affine, c.Shape[1], dtype, torch.CPU);
        var dy = torch.randn(c.Shape, dtype);
        var expected = Oracle.Native(x, c.Groups, w, b, Eps, dy);
        var actual = Oracle.Ours(path, x, c.Groups, w, b, Eps, dy);

        var x64 = x.to(ScalarType.Float64);
        var (variance, _) = x64.reshape(c.Shape[0], c.Groups, -1).var_mean(new long[] { 2 }, unbiased: false);
        double rMax = (variance + Eps).rsqrt().max().item<double>();
        double xMax = x64.abs().max().item<double>();
        double wMax = w!.abs().max().ToDouble();
        double dyMax = dy.abs().max().ToDouble();
        long rows = x.numel() / c.Shape[1];

        var errors = new (string Name, double Error)[]
        {
            ("y", TestTensors.ScaledError(actual.Y, expected.Y, xMax * rMax * wMax)),
            ("dx", TestTensors.ScaledError(actual.Dx!, expected.Dx!, rMax * wMax * dyMax)),
            ("dweight", TestTensors.ScaledError(actual.Dweight!, expected.Dweight!, rows * dyMax * xMax * rMax)),
            ("dbias", TestTensors.RelativeError(actual.Dbias!, expected.Dbias!)),
        };
        foreach (var (name, error) in errors)
            TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{name}: {error:E2} of the cancelled terms' scale"));

        // The parity tolerances apply unchanged, only against the scale at which rounding happens.
        double tolerance = dtype == ScalarType.Float64 ? ParityCheck.Float64Tolerance : ParityCheck.Float32Tolerance;
        Assert.Multiple(() =>
        {
            foreach (var (name, error) in errors)
                Assert.That(error, Is.LessThanOrEqualTo(tolerance), name);
        });
    }

    public static IEnumerable<TestCaseData> OneElementCases()
    {
        // D·S = 1 with N > 1 (N·D·S = 1 is rejected as in PyTorch).
        var shapes = new (long[] Shape, long Groups)[]
        {
            (new long[] { 8, 6 }, 6),
            (new long[] { 2, 3, 1, 1 }, 3),
            (new long[] { 4, 64 }, 64),
        };
        var kernels = new (ScalarType Dtype, KernelPath Path)[]
        {
            (ScalarType.Float32, KernelPath.Default), (ScalarType.Float32, KernelPath.Generic),
            (ScalarType.Float64, KernelPath.Default), (ScalarType.Float64, KernelPath.Generic),
            (ScalarType.Float16, KernelPath.Default), (ScalarType.BFloat16, KernelPath.Default),
        };
        foreach (var (dtype, path) in kernels)
            foreach (var affine in new[] { Affine.Both, Affine.None })
                foreach (var (shape, groups) in shapes)
                    yield return new TestCaseData(shape, groups, dtype, path, affine)
                        .SetArgDisplayNames($"{path}_{ParityTests.DtypeName(dtype)}_{string.Join("x", shape)}_g{groups}_{affine}");
    }

    /// <summary>
    /// Groups of one element have exact answers: x − μ = 0, so x̂ = 0, y = act(β) (0 without bias), and dx
    /// and dweight are exactly 0; any other value is rounding noise that a correct kernel need not make.
    /// dbias = Σ_n dy·act′(β) is a sum, judged against float64 at the dtype's rounding.
    /// </summary>
    [TestCaseSource(nameof(OneElementCases))]
    public void OneElementGroupsGiveExactAnswers(long[] shape, long groups, ScalarType dtype, KernelPath path, Affine affine)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(5);
        var x = torch.randn(shape, dtype);
        var (w, b) = TestTensors.Parameters(affine, shape[1], dtype, torch.CPU);
        var dy = torch.randn(shape, dtype);
        // Half types are computed in float32 and rounded once, so y is act(β) in float32, then rounded.
        var opmath = dtype is ScalarType.Float16 or ScalarType.BFloat16 ? ScalarType.Float32 : dtype;
        var broadcast = new long[shape.Length];
        Array.Fill(broadcast, 1L);
        broadcast[1] = shape[1];
        var beta = (b ?? torch.zeros(shape[1], dtype)).to(opmath).reshape(broadcast).expand(shape);
        double dbiasTolerance = dtype switch
        {
            ScalarType.Float64 => ParityCheck.Float64Tolerance,
            ScalarType.Float32 => ParityCheck.Float32Tolerance,
            ScalarType.Float16 => 2e-3,   // one rounding to float16's 11 bits of dbias and of act′(β)'s product
            _ => 1.6e-2,                  // the same at bfloat16's 8 bits
        };

        var lines = new List<string>();
        Assert.Multiple(() =>
        {
            foreach (var api in new[] { Api.Functional, Api.Module })
                foreach (var activation in Oracle.AllActivations)
                {
                    string label = $"{api} {activation}";
                    var actual = Oracle.Ours(path, x, groups, w, b, Eps, dy, activation, api);
                    var expectedY = Oracle.Activate(beta, activation).to(dtype);
                    if (activation == Activation.SiLU && path == KernelPath.Default)
                    {
                        // The fused kernel's own exponential, not libtorch's: silu(β) to within an ulp of either
                        // side's rounding (β itself is exact, so this bounds only the activation).
                        var ulps = (actual.Y.to(ScalarType.Float64) - expectedY.to(ScalarType.Float64)).abs()
                            / (expectedY.to(ScalarType.Float64).abs() * ParityCheck.UnitRoundoff(dtype) * 2).clamp_min(double.Epsilon);
                        Assert.That(TestTensors.Worst(ulps), Is.LessThanOrEqualTo(2.0), $"{label}: y against libtorch's silu(β), in ulps of the dtype");
                    }
                    else if (activation == Activation.GELU)
                    {
                        // Ours is our own series on the fused path; on the generic one, libtorch's in-place gelu on y
                        // and its out-of-place gelu on the expanded β take its vector and scalar erf, which differ in
                        // the last bits. Either side is accurate to a few roundings of max(|β|, 1)
                        // (GeluAccuracyTests), so the two must agree to 8.
                        var scaled = (actual.Y.to(ScalarType.Float64) - expectedY.to(ScalarType.Float64)).abs()
                            / (beta.to(ScalarType.Float64).abs().clamp_min(1) * ParityCheck.UnitRoundoff(dtype));
                        Assert.That(TestTensors.Worst(scaled), Is.LessThanOrEqualTo(8.0), $"{label}: y against libtorch's gelu(β), in roundings of max(|β|, 1)");
                    }
                    else
                    {
                        Assert.That(TestTensors.Identical(actual.Y, expectedY), Is.True,
                            $"{label}: y is not bit-equal to act(β); max|y − act(β)| = {MaxDifference(actual.Y, expectedY):E3}");
                    }
                    Assert.That(actual.Dx!.eq(0).all().item<bool>(), Is.True,
                        $"{label}: dx is not exactly 0; max|dx| = {MaxDifference(actual.Dx!, torch.zeros_like(actual.Dx!)):E3}");
                    if (affine == Affine.None) continue;
                    Assert.That(actual.Dweight!.eq(0).all().item<bool>(), Is.True,
                        $"{label}: dweight is not exactly 0; max|dweight| = {MaxDifference(actual.Dweight!, torch.zeros_like(actual.Dweight!)):E3}");
                    var reference = Oracle.Native(x.to(ScalarType.Float64), groups, w!.to(ScalarType.Float64), b!.to(ScalarType.Float64), Eps,
                        dy.to(ScalarType.Float64), activation);
                    double dbiasError = TestTensors.RelativeError(actual.Dbias!, reference.Dbias!);
                    lines.Add(string.Create(CultureInfo.InvariantCulture, $"{label}: dbias {dbiasError:E2} against float64"));
                    Assert.That(dbiasError, Is.LessThanOrEqualTo(dbiasTolerance), $"{label}: dbias against libtorch in float64");
                }
        });
        TestContext.Out.WriteLine(string.Join("\n", lines));
    }

    /// <summary>
    /// Double backward through groups of one element: the recorded backward divides by nothing that is 0
    /// (r = 1/√ε), so the second derivatives must be finite, match libtorch's, and dx itself stay exactly 0.
    /// </summary>
    [Test]
    public void OneElementGroupsDoubleBackwardIsFiniteAndMatchesNative([Values] KernelPath path, [Values] Activation activation)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(6);
        var shape = new long[] { 4, 6 };
        var x = torch.randn(shape, ScalarType.Float64);
        var w = torch.rand(6, ScalarType.Float64) + 0.5;
        var b = torch.randn(6, ScalarType.Float64);
        var u = torch.randn(shape, ScalarType.Float64);
        var v = torch.randn(shape, ScalarType.Float64);

        (Tensor Dx, Tensor[] Second) Run(Func<Tensor, Tensor, Tensor, Tensor> groupNorm)
        {
            var xl = x.detach().requires_grad_();
            var wl = w.detach().requires_grad_();
            var bl = b.detach().requires_grad_();
            var first = torch.autograd.grad(new[] { (groupNorm(xl, wl, bl) * u).sum() }, new[] { xl, wl, bl }, create_graph: true, retain_graph: true);
            var s = (first[0] * v).sum() + (first[1] * first[2]).sum();
            var second = torch.autograd.grad(new[] { s }, new[] { xl, wl, bl }, allow_unused: true);
            return (first[0].detach(), second.Select((g, i) => g is null || g.IsInvalid ? torch.zeros_like(i == 0 ? xl : wl) : g).ToArray());
        }

        Tensor dx;
        Tensor[] ours;
        using (path.Force())
            (dx, ours) = Run((xi, wi, bi) => Functional.group_norm(xi, 6, wi, bi, Eps, activation));
        var (_, native) = Run((xi, wi, bi) => Oracle.Activate(torch.nn.functional.group_norm(xi, 6, wi, bi, Eps), activation));

        Assert.Multiple(() =>
        {
            Assert.That(dx.eq(0).all().item<bool>(), Is.True, "dx under create_graph is not exactly 0");
            for (int i = 0; i < 3; i++)
            {
                Assert.That(ours[i].isfinite().all().item<bool>(), Is.True, $"∂s/∂{Names[i]} is not finite");
                // Terms that are 0 in exact arithmetic are multiplied by powers of r = 1/√ε ≈ 316: against a scale
                // of 1, their rounding noise is up to r times the parity bound (measured 1.1e-13, bound 5.9e-12).
                double error = TestTensors.ScaledError(ours[i], native[i], 1.0);
                double bound = ParityCheck.Float64Tolerance / Math.Sqrt(Eps);
                TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"∂s/∂{Names[i]}: {error:E2} against libtorch"));
                Assert.That(error, Is.LessThanOrEqualTo(bound), $"∂s/∂{Names[i]} against libtorch");
            }
        });
    }

    private static readonly string[] Names = { "x", "weight", "bias" };

    private static double MaxDifference(Tensor a, Tensor b) =>
        (a.to(ScalarType.Float64) - b.to(ScalarType.Float64)).abs().max().item<double>();
}
