using System.Globalization;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Kernels;

/// <summary>
/// The fused GELU on its own, through groups of one element, where y = GELU(β) and dβ = Σ_n dy·GELU′(β)
/// exactly, so the activation is all that is measured: β on a fine grid over [−12, 12], ours against
/// float64 (Φ from erfc) beside libtorch's gelu in the same dtype. .NET has no erf, so ours is our own series
/// (<c>GeluFormula</c>); it must be no less accurate than libtorch's, measured both ways: absolute error
/// relative to max(|β|, 1) (where libtorch's 1 + erf(z/√2) is accurate), and relative error of y in the
/// lower tail β ≤ −1 (where that sum cancels and ours keeps Φ(β)'s own digits: measured 3.9e-6 at β = −12 in
/// float32, where libtorch's is 100 %).
/// </summary>
[TestFixture]
public sealed class GeluAccuracyTests
{
    private const long Points = 24_001;

    [Test]
    public void GeluAndItsGradientAreAsAccurateAsLibtorchs([Values(ScalarType.Float32, ScalarType.Float64)] ScalarType dtype, [Values] KernelPath path)
    {
        using var scope = torch.NewDisposeScope();
        var beta64 = torch.linspace(-12, 12, Points, ScalarType.Float64);
        var beta = beta64.to(dtype);
        // The reference sees exactly the dtype's β.
        beta64 = beta.to(ScalarType.Float64);
        var x = torch.randn(new long[] { 2, Points }, dtype);
        var dy = torch.ones(new long[] { 2, Points }, dtype);
        var ours = Oracle.Ours(path, x, Points, torch.ones(Points, dtype), beta, 1e-5, dy, Activation.GELU);

        // Φ from erfc, not libtorch's float64 gelu: 1 + erf(β/√2) is 0 in float64 below β ≈ −8.3, where Φ is not.
        var cdf64 = (beta64 * -System.Math.Sqrt(0.5)).erfc() * 0.5;
        var reference64 = beta64 * cdf64;
        var grad64 = (cdf64 + beta64 * (beta64.square() * -0.5).exp() / System.Math.Sqrt(2 * System.Math.PI)) * 2;
        var libtorch = torch.nn.functional.gelu(beta).to(ScalarType.Float64);
        var libtorchGrad = Derivative(beta).to(ScalarType.Float64) * 2;

        var scale = beta64.abs().clamp_min(1);
        var y64 = ours.Y[0].to(ScalarType.Float64);
        double ourY = TestTensors.Worst((y64 - reference64).abs() / scale);
        double theirY = TestTensors.Worst((libtorch - reference64).abs() / scale);
        double ourGrad = TestTensors.Worst((ours.Dbias!.to(ScalarType.Float64) - grad64).abs() / scale);
        double theirGrad = TestTensors.Worst((libtorchGrad - grad64).abs() / scale);
        var tail = beta64.le(-1);
        // Φ(β)'s relative condition number in the tail is about β² (a rounding of β moves e^(−β²/2) by β²
        // roundings), so the relative error is judged per unit of 1 + β².
        var condition = beta64.square() + 1;
        double ourTail = TestTensors.Worst(((y64 - reference64).abs() / reference64.abs() / condition)[tail]);
        double theirTail = TestTensors.Worst(((libtorch - reference64).abs() / reference64.abs() / condition)[tail]);
        TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{dtype} {path}: y {ourY:E2} (libtorch {theirY:E2}), GELU′ {ourGrad:E2} (libtorch {theirGrad:E2}), y relative in the tail per unit of 1 + β² {ourTail:E2} (libtorch {theirTail:E2})"));

        double unit = ParityCheck.UnitRoundoff(dtype);
        Assert.Multiple(() =>
        {
            // Ours within a few roundings of the dtype, and within 2× libtorch's own error where that is larger.
            Assert.That(ourY, Is.LessThanOrEqualTo(System.Math.Max(16 * unit, 2 * theirY)), "y, absolute / max(|β|, 1)");
            Assert.That(ourGrad, Is.LessThanOrEqualTo(System.Math.Max(16 * unit, 2 * theirGrad)), "GELU′, absolute / max(|β|, 1)");
            if (path == KernelPath.Default)
                Assert.That(ourTail, Is.LessThanOrEqualTo(8 * unit), "y relative in the lower tail, per unit of 1 + β²");
        });
    }

    /// <summary>GELU′ from libtorch's own autograd, in the tensor's dtype: libtorch's side of the comparison.</summary>
    private static Tensor Derivative(Tensor z)
    {
        var leaf = z.detach().requires_grad_(true);
        torch.nn.functional.gelu(leaf).sum().backward();
        return leaf.grad!.detach();
    }
}
