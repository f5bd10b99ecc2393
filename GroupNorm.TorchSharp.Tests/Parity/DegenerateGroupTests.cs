using System;
using System.Collections.Generic;
using System.Globalization;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Parity;

/// <summary>
/// Groups of one or two elements. With one element the variance is 0: y = β, and dx and dweight are 0
/// in exact arithmetic, so both implementations return pure cancellation noise. With two, dx carries the
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
            ("y", Error(actual.Y, expected.Y, xMax * rMax * wMax)),
            ("dx", Error(actual.Dx!, expected.Dx!, rMax * wMax * dyMax)),
            ("dweight", Error(actual.Dweight!, expected.Dweight!, rows * dyMax * xMax * rMax)),
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

    private static double Error(Tensor actual, Tensor expected, double scale)
    {
        using var diff = (actual.to(ScalarType.Float64) - expected.to(ScalarType.Float64)).abs().max();
        using var reference = expected.abs().max();
        return diff.item<double>() / Math.Max(Math.Max(reference.ToDouble(), scale), double.Epsilon);
    }
}
