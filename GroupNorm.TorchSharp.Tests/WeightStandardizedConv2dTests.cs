using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace GroupNormalization.Tests;

/// <summary>
/// <see cref="WeightStandardizedConv2d"/> against a reference built independently from TorchSharp ops in
/// float64 (mean and biased variance as explicit sums over the filter, then <c>functional.conv2d</c>):
/// output, gradients (also against central finite differences), the standardized weight's statistics,
/// checkpoints shared with <c>nn.Conv2d</c>, errors, conversions and training.
/// </summary>
[TestFixture]
public sealed class WeightStandardizedConv2dTests
{
    // Two float64 evaluations of the same formula by different op sequences differ by a few ulps of the
    // result; 1e-12 of the output's scale leaves room for that and catches any wrong term.
    private const double Float64Tolerance = 1e-12;

    /// <summary>float32's unit roundoff, 2^-24.</summary>
    private const double Float32Roundoff = 5.9604644775390625e-8;

    private static readonly string[] s_parameterNames = { "weight", "bias" };
    private static readonly string[] s_weightOnly = { "weight" };
    private static readonly string[] s_convParameterNames = { "conv.weight", "conv.bias" };

    /// <summary>One convolution's geometry.</summary>
    public sealed record ConvCase(long N, long In, long Out, long H, long W, (long, long) Kernel, (long, long) Stride, (long, long) Padding,
        (long, long) Dilation, long Groups, bool Bias, PaddingModes Mode = PaddingModes.Zeros)
    {
        public long FilterSize => In / Groups * Kernel.Item1 * Kernel.Item2;

        public long[] InputShape => new[] { N, In, H, W };

        public override string ToString() =>
            $"{N}x{In}x{H}x{W}_o{Out}_k{Kernel.Item1}x{Kernel.Item2}_s{Stride.Item1}x{Stride.Item2}_p{Padding.Item1}x{Padding.Item2}" +
            $"_d{Dilation.Item1}x{Dilation.Item2}_g{Groups}{(Bias ? "" : "_nobias")}{(Mode == PaddingModes.Zeros ? "" : "_" + Mode)}";
    }

    private static readonly ConvCase[] s_cases =
    {
        new(2, 3, 8, 9, 9, (3, 3), (1, 1), (1, 1), (1, 1), 1, true),
        new(1, 4, 6, 10, 7, (3, 3), (2, 2), (0, 0), (1, 1), 2, false),
        new(3, 4, 4, 8, 8, (3, 2), (1, 2), (2, 1), (2, 1), 2, true),
        new(2, 2, 5, 6, 6, (1, 1), (1, 1), (0, 0), (1, 1), 1, true),
        new(1, 6, 4, 7, 9, (5, 3), (2, 1), (2, 1), (1, 2), 2, false),
    };

    public static IEnumerable<TestCaseData> OutputCases() =>
        from dtype in new[] { ScalarType.Float32, ScalarType.Float64 }
        from c in s_cases
        select new TestCaseData(c, dtype).SetArgDisplayNames($"{dtype}_{c}");

    public static IEnumerable<TestCaseData> GradientCases() =>
        s_cases.Select(c => new TestCaseData(c).SetArgDisplayNames(c.ToString()));

    // Small enough for a finite difference per entry; the third pads by reflection, so the gradient also
    // runs through F.pad.
    public static IEnumerable<TestCaseData> FiniteDifferenceCases() => new ConvCase[]
    {
        new(2, 4, 4, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1), 2, true),
        new(1, 3, 2, 6, 5, (3, 2), (2, 1), (0, 0), (1, 1), 1, true),
        new(1, 2, 4, 5, 6, (3, 3), (1, 1), (2, 2), (2, 1), 2, true, PaddingModes.Reflect),
    }.Select(c => new TestCaseData(c).SetArgDisplayNames(c.ToString()));

    // ---------------------------------------------------------------------------------------------
    // 1. Output against the independent reference.
    // ---------------------------------------------------------------------------------------------

    /// <summary>
    /// float64 within 1e-12 of the output's scale; float32 within a bound derived from the operations (below).
    /// The filters get scales from 0.005 to 0.5 (so eps = 1e-5 moves the small ones by up to 20 %) and means
    /// of up to 3 of their own standard deviations (so a missing centring shows).
    /// </summary>
    [TestCaseSource(nameof(OutputCases))]
    public void OutputMatchesReference(ConvCase c, ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(101);
        using var m = Build(c, dtype);
        SetWeight(m, RandomFilters(m.weight.shape));
        var x = torch.randn(c.InputShape, dtype);

        var y = m.forward(x);
        var expected = Reference(c, x, m.weight, m.bias, m.eps);
        Assert.That(y.dtype, Is.EqualTo(dtype));

        if (dtype == ScalarType.Float64)
        {
            double error = TestTensors.RelativeError(y, expected);
            TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"float64: max|y − ref| / max|ref| = {error:E2}"));
            Assert.That(error, Is.LessThanOrEqualTo(Float64Tolerance));
            return;
        }

        // float32, against the float64 reference of the same float32 values. Rounding the standardized weight
        // costs about (2n + 8)·u relative to the filter's scale, amplified by how far the values sit from their
        // mean (κ = max|W_o| / std(W_o): the centring cancels leading digits); summing n products costs (n + 1)·u
        // of Σ|x||Ŵ|. Both are worst-case bounds of the operations, not fitted to results.
        long n = c.FilterSize;
        var wHat = ReferenceStandardize(m.weight, m.eps);
        double kappa = Conditioning(m.weight);
        double sumAbs = ReferenceConv(c, x.abs().to(ScalarType.Float64), wHat.abs(), m.bias?.abs().to(ScalarType.Float64)).max().item<double>();
        double sumX = ReferenceConv(c, x.abs().to(ScalarType.Float64), torch.ones_like(wHat), null).max().item<double>();
        double bound = (n + 1) * Float32Roundoff * sumAbs + (2 * n + 8) * Float32Roundoff * kappa * wHat.abs().max().item<double>() * sumX;
        double diff = (y.to(ScalarType.Float64) - expected).abs().max().item<double>();
        TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"float32: max|y − ref| = {diff:E2}, bound {bound:E2}, max|ref| = {expected.abs().max().item<double>():E2}"));
        Assert.That(diff, Is.LessThanOrEqualTo(bound));
    }

    /// <summary>The square-kernel constructor is the tuple one with equal pairs.</summary>
    [Test]
    public void ScalarConstructorEqualsTupleConstructor()
    {
        using var scope = torch.NewDisposeScope();
        using var square = new WeightStandardizedConv2d(4, 6, 3, stride: 2, padding: 1, dilation: 2, groups: 2, bias: false, eps: 1e-3);
        using var pairs = new WeightStandardizedConv2d(4, 6, (3, 3), stride: (2, 2), padding: (1, 1), dilation: (2, 2), groups: 2, bias: false, eps: 1e-3);
        using var defaults = new WeightStandardizedConv2d(4, 6, (3, 3));
        Assert.Multiple(() =>
        {
            Assert.That(square.kernel_size, Is.EqualTo(pairs.kernel_size));
            Assert.That(square.stride, Is.EqualTo(pairs.stride));
            Assert.That(square.padding, Is.EqualTo(pairs.padding));
            Assert.That(square.dilation, Is.EqualTo(pairs.dilation));
            Assert.That(square.groups, Is.EqualTo(2));
            Assert.That(square.bias, Is.Null);
            Assert.That(square.eps, Is.EqualTo(1e-3));
            Assert.That(square.weight.shape, Is.EqualTo(new long[] { 6, 2, 3, 3 }));
            Assert.That(defaults.stride, Is.EqualTo(new long[] { 1, 1 }));
            Assert.That(defaults.padding, Is.EqualTo(new long[] { 0, 0 }));
            Assert.That(defaults.dilation, Is.EqualTo(new long[] { 1, 1 }));
            Assert.That(defaults.eps, Is.EqualTo(1e-5));
            Assert.That(defaults.bias, Is.Not.Null);
        });

        var x = torch.randn(2, 4, 9, 9);
        SetWeight(pairs, square.weight);
        Assert.That(TestTensors.Identical(square.forward(x), pairs.forward(x)), Is.True);
    }

    /// <summary>An unbatched (C, H, W) input gives the batched result's first sample.</summary>
    [Test]
    public void UnbatchedInputMatchesBatched()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(102);
        using var m = new WeightStandardizedConv2d(3, 5, 3, padding: 1, dtype: ScalarType.Float64);
        var x = torch.randn(new long[] { 3, 6, 7 }, ScalarType.Float64);
        var unbatched = m.forward(x);
        var batched = m.forward(x.unsqueeze(0));
        Assert.Multiple(() =>
        {
            Assert.That(unbatched.shape, Is.EqualTo(new long[] { 5, 6, 7 }));
            Assert.That(TestTensors.RelativeError(unbatched, batched[0]), Is.LessThanOrEqualTo(Float64Tolerance));
        });
    }

    /// <summary>
    /// Reflect, replicate, circular and constant padding give what TorchSharp's <c>nn.Conv2d</c> with the same
    /// padding mode gives once its weight is the standardized one (it pads the same way, through F.pad).
    /// </summary>
    [Test]
    public void PaddingModesMatchTorchSharpsConv2dWithStandardizedWeight([Values(PaddingModes.Reflect, PaddingModes.Replicate, PaddingModes.Circular, PaddingModes.Constant)] PaddingModes mode)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(103);
        using var ours = new WeightStandardizedConv2d(4, 6, (3, 3), padding: (2, 1), dilation: (1, 2), padding_mode: mode, groups: 2, dtype: ScalarType.Float64);
        using var theirs = torch.nn.Conv2d(4, 6, (3, 3), padding: (2, 1), dilation: (1, 2), padding_mode: mode, groups: 2, dtype: ScalarType.Float64);
        CopyStandardized(ours, theirs);
        var x = torch.randn(new long[] { 2, 4, 5, 6 }, ScalarType.Float64);
        var y = ours.forward(x);
        var expected = theirs.forward(x);
        // Constant pads with zeros, as Zeros does: a mode that reached libtorch as anything else would differ.
        var zeros = Reference(new ConvCase(2, 4, 6, 5, 6, (3, 3), (1, 1), (2, 1), (1, 2), 2, true), x, ours.weight, ours.bias, ours.eps);
        Assert.Multiple(() =>
        {
            Assert.That(TestTensors.RelativeError(y, expected), Is.LessThanOrEqualTo(Float64Tolerance), "against nn.Conv2d");
            Assert.That(TestTensors.RelativeError(y, zeros), mode == PaddingModes.Constant ? Is.LessThanOrEqualTo(Float64Tolerance) : Is.GreaterThan(1e-3),
                "against zero padding");
        });
    }

    /// <summary>
    /// The base class's public <c>SetPadding(Padding.Same)</c> switches to libtorch's 'same' padding: the output
    /// keeps the input's size and equals conv2d_padding with the standardized weight.
    /// </summary>
    [Test]
    public void SamePaddingTypeSetThroughTheBaseClassWorks()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(104);
        using var m = new WeightStandardizedConv2d(3, 4, (3, 5), dilation: (2, 1), dtype: ScalarType.Float64);
        m.SetPadding(Padding.Same);
        var x = torch.randn(new long[] { 2, 3, 2, 7 }, ScalarType.Float64);
        var y = m.forward(x);
        var expected = torch.nn.functional.conv2d_padding(x, ReferenceStandardize(m.weight, m.eps), m.bias, new long[] { 1, 1 }, Padding.Same, new long[] { 2, 1 });
        Assert.Multiple(() =>
        {
            Assert.That(y.shape, Is.EqualTo(new long[] { 2, 4, 2, 7 }));
            Assert.That(TestTensors.RelativeError(y, expected), Is.LessThanOrEqualTo(Float64Tolerance));
            Assert.That(m.ToString(), Is.EqualTo("WeightStandardizedConv2d(3, 4, kernel_size=(3, 5), stride=(1, 1), padding=same, dilation=(2, 1), eps=1e-05)"));
        });
    }

    // ---------------------------------------------------------------------------------------------
    // 2. Gradients.
    // ---------------------------------------------------------------------------------------------

    /// <summary>
    /// ∂L/∂x, ∂L/∂W and ∂L/∂b of L = (y·u).sum() from backward(), against central differences of L entry by
    /// entry, in float64.
    /// </summary>
    [TestCaseSource(nameof(FiniteDifferenceCases))]
    public void GradientsMatchFiniteDifferences(ConvCase c)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(105);
        using var m = Build(c, ScalarType.Float64);
        // Filters of scale ~0.5 with offsets: away from the tiny scales where the third derivative (∝ 1/σ³) would
        // swamp the finite difference.
        SetWeight(m, torch.randn(m.weight.shape, ScalarType.Float64) * 0.5 + torch.randn(new long[] { c.Out, 1, 1, 1 }, ScalarType.Float64) * 0.3);
        using (torch.no_grad()) m.bias!.normal_();
        var x0 = torch.randn(c.InputShape, ScalarType.Float64);
        var u = torch.randn(m.forward(x0).shape, ScalarType.Float64);

        var x = x0.detach().requires_grad_();
        (m.forward(x) * u).sum().backward();
        Assert.That(m.weight.grad, Is.Not.Null, "no gradient reached the weight: the standardization is detached");
        Assert.That(x.grad, Is.Not.Null);
        Assert.That(m.bias.grad, Is.Not.Null);
        var dx = x.grad!.clone();
        var dw = m.weight.grad!.clone();
        var db = m.bias.grad!.clone();

        var w0 = m.weight.detach().clone();
        var b0 = m.bias.detach().clone();
        double L(Tensor xv, Tensor wv, Tensor bv)
        {
            using var inner = torch.NewDisposeScope();
            using var noGrad = torch.no_grad();
            m.weight.copy_(wv);
            m.bias.copy_(bv);
            return (m.forward(xv) * u).sum().item<double>();
        }
        var nx = FiniteDifferences.Gradient(x0, xv => L(xv, w0, b0));
        var nw = FiniteDifferences.Gradient(w0, wv => L(x0, wv, b0));
        var nb = FiniteDifferences.Gradient(b0, bv => L(x0, w0, bv));

        double ex = FiniteDifferences.Error(dx, nx), ew = FiniteDifferences.Error(dw, nw), eb = FiniteDifferences.Error(db, nb);
        TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"vs finite differences: dx {ex:E2}, dW {ew:E2}, db {eb:E2}"));
        Assert.Multiple(() =>
        {
            Assert.That(ex, Is.LessThanOrEqualTo(FiniteDifferences.Tolerance), "dx");
            Assert.That(ew, Is.LessThanOrEqualTo(FiniteDifferences.Tolerance), "dW");
            Assert.That(eb, Is.LessThanOrEqualTo(FiniteDifferences.Tolerance), "db");
        });
    }

    /// <summary>dx, dW and db against autograd through the independent reference, in float64.</summary>
    [TestCaseSource(nameof(GradientCases))]
    public void GradientsMatchReferenceAutograd(ConvCase c)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(106);
        using var m = Build(c, ScalarType.Float64);
        SetWeight(m, RandomFilters(m.weight.shape));
        if (m.bias is not null) using (torch.no_grad()) m.bias.normal_();
        var x0 = torch.randn(c.InputShape, ScalarType.Float64);

        var x = x0.detach().requires_grad_();
        var y = m.forward(x);
        var u = torch.randn(y.shape, ScalarType.Float64);
        (y * u).sum().backward();

        var xr = x0.detach().requires_grad_();
        var wr = m.weight.detach().clone().requires_grad_();
        var br = m.bias?.detach().clone().requires_grad_();
        (Reference(c, xr, wr, br, m.eps) * u).sum().backward();

        Assert.Multiple(() =>
        {
            Assert.That(m.weight.grad, Is.Not.Null, "no gradient reached the weight: the standardization is detached");
            Assert.That(TestTensors.RelativeError(x.grad!, xr.grad!), Is.LessThanOrEqualTo(Float64Tolerance), "dx");
            Assert.That(TestTensors.RelativeError(m.weight.grad!, wr.grad!), Is.LessThanOrEqualTo(Float64Tolerance), "dW");
            if (c.Bias)
                Assert.That(TestTensors.RelativeError(m.bias!.grad!, br!.grad!), Is.LessThanOrEqualTo(Float64Tolerance), "db");
        });
    }

    // ---------------------------------------------------------------------------------------------
    // 3. The standardized weight.
    // ---------------------------------------------------------------------------------------------

    /// <summary>
    /// Every filter of standardize_weight(W, eps) has mean 0 and biased variance var(W_o) / (var(W_o) + eps):
    /// with filter scales from 0.005 to 0.5 that ratio runs from about 0.02 to 0.93 with eps = 1e-2 (0.95 to 1
    /// with 1e-5), so eps outside the square root, a missing eps or the unbiased variance each miss it.
    /// </summary>
    [Test]
    public void StandardizedFiltersHaveMeanZeroAndVarianceRatio([Values(ScalarType.Float32, ScalarType.Float64)] ScalarType dtype, [Values(1e-5, 1e-2)] double eps)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(107);
        var shape = new long[] { 16, 3, 3, 3 };
        var w = RandomFilters(shape).to(dtype);
        var standardized = WeightStandardizedConv2d.standardize_weight(w, eps);
        Assert.That(standardized.dtype, Is.EqualTo(dtype));
        Assert.That(standardized.shape, Is.EqualTo(shape));

        long n = 27;
        var filters = standardized.to(ScalarType.Float64).reshape(16, n);
        var mean = filters.sum(1) / n;
        var variance = (filters - mean.unsqueeze(1)).square().sum(1) / n;
        var raw = w.to(ScalarType.Float64).reshape(16, n);
        var rawVariance = (raw - (raw.sum(1) / n).unsqueeze(1)).square().sum(1) / n;
        var expected = rawVariance / (rawVariance + eps);

        // float32: the bound of OutputMatchesReference for the weight alone.
        double tolerance = dtype == ScalarType.Float64 ? Float64Tolerance : (2 * n + 8) * Float32Roundoff * Conditioning(w);
        double meanError = mean.abs().max().item<double>();
        double varianceError = TestTensors.RelativeError(variance, expected);
        TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"max|mean| = {meanError:E2}, variance ratio error {varianceError:E2} (ratios {expected.min().item<double>():F4}…{expected.max().item<double>():F4}), tolerance {tolerance:E2}"));
        Assert.Multiple(() =>
        {
            Assert.That(meanError, Is.LessThanOrEqualTo(tolerance), "filter means");
            Assert.That(varianceError, Is.LessThanOrEqualTo(tolerance), "filter variances");
        });
    }

    /// <summary>Any weight of rank ≥ 2 (Conv1d's, Conv3d's, Linear's) is standardized per output row.</summary>
    [Test]
    public void StandardizeWeightWorksForOtherRanks([Values(2, 3, 5)] int rank)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(108);
        var shape = new long[] { 5, 3, 2, 2, 2 }[..rank];
        var w = torch.randn(shape, ScalarType.Float64) * 2 + 1;
        var standardized = WeightStandardizedConv2d.standardize_weight(w, 1e-3);
        var expected = ReferenceStandardize(w, 1e-3);
        Assert.That(TestTensors.RelativeError(standardized, expected), Is.LessThanOrEqualTo(Float64Tolerance));
    }

    /// <summary>Half types are standardized in float32 and rounded once: exactly float32's answer, rounded.</summary>
    [Test]
    public void HalfWeightIsStandardizedInFloat32([Values(ScalarType.BFloat16, ScalarType.Float16)] ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(109);
        var w = RandomFilters(new long[] { 8, 4, 3, 3 }).to(dtype);
        var standardized = WeightStandardizedConv2d.standardize_weight(w);
        var expected = WeightStandardizedConv2d.standardize_weight(w.to(ScalarType.Float32)).to(dtype);
        Assert.Multiple(() =>
        {
            Assert.That(standardized.dtype, Is.EqualTo(dtype));
            Assert.That(TestTensors.Identical(standardized, expected), Is.True);
        });
    }

    // ---------------------------------------------------------------------------------------------
    // 4. Parameters and checkpoints shared with nn.Conv2d.
    // ---------------------------------------------------------------------------------------------

    /// <summary>
    /// The same seed gives bit-for-bit the parameters TorchSharp's <c>nn.Conv2d</c> gets (PyTorch's
    /// kaiming_uniform(a = √5) and U(±1/√fan_in)), trainable, of the requested dtype.
    /// </summary>
    [Test]
    public void ParametersAreInitialisedAsTorchSharpsConv2d([Values(ScalarType.Float32, ScalarType.Float64)] ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(110);
        using var ours = new WeightStandardizedConv2d(4, 6, (3, 2), groups: 2, dtype: dtype);
        torch.manual_seed(110);
        using var theirs = torch.nn.Conv2d(4, 6, (3, 2), groups: 2, dtype: dtype);
        double bound = 1 / Math.Sqrt(2 * 3 * 2);
        Assert.Multiple(() =>
        {
            Assert.That(ours.weight.dtype, Is.EqualTo(dtype));
            Assert.That(ours.bias!.dtype, Is.EqualTo(dtype));
            Assert.That(TestTensors.Identical(ours.weight, theirs.weight), Is.True, "weight");
            Assert.That(TestTensors.Identical(ours.bias!, theirs.bias!), Is.True, "bias");
            Assert.That(ours.weight.abs().max().to(ScalarType.Float64).item<double>(), Is.LessThanOrEqualTo(bound).And.GreaterThan(bound / 2));
            Assert.That(ours.weight.requires_grad && ours.bias!.requires_grad, Is.True);
            Assert.That(ours.parameters().Count(), Is.EqualTo(2));
        });
    }

    [Test]
    public void StateDictKeysAreWeightAndBias([Values] bool bias)
    {
        using var scope = torch.NewDisposeScope();
        using var m = new WeightStandardizedConv2d(3, 4, 3, bias: bias);
        Assert.That(m.state_dict().Keys, Is.EquivalentTo(bias ? s_parameterNames : s_weightOnly));
    }

    /// <summary>
    /// Ours → nn.Conv2d → ours, with and without bias: the parameters arrive unchanged, and the module loaded from
    /// TorchSharp's checkpoint computes conv2d(x, standardize(W), b) with TorchSharp's W and b.
    /// </summary>
    [Test]
    public void StateDictMovesBothWaysWithTorchSharpsConv2d([Values] bool bias)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(111);
        var c = new ConvCase(2, 4, 6, 7, 7, (3, 3), (2, 2), (1, 1), (1, 1), 2, bias);
        using var ours = new WeightStandardizedConv2d(4, 6, 3, stride: 2, padding: 1, groups: 2, bias: bias, dtype: ScalarType.Float64);
        SetWeight(ours, RandomFilters(ours.weight.shape));

        using var theirs = torch.nn.Conv2d(4, 6, 3, stride: 2, padding: 1, groups: 2, bias: bias, dtype: ScalarType.Float64);
        var (missing, unexpected) = theirs.load_state_dict(ours.state_dict());
        Assert.That(missing.Concat(unexpected), Is.Empty, "ours → TorchSharp's");

        using var back = new WeightStandardizedConv2d(4, 6, 3, stride: 2, padding: 1, groups: 2, bias: bias, dtype: ScalarType.Float64);
        (missing, unexpected) = back.load_state_dict(theirs.state_dict());
        Assert.That(missing.Concat(unexpected), Is.Empty, "TorchSharp's → ours");

        var x = torch.randn(c.InputShape, ScalarType.Float64);
        var expected = Reference(c, x, theirs.weight, theirs.bias, 1e-5);
        Assert.Multiple(() =>
        {
            Assert.That(TestTensors.Identical(theirs.weight, ours.weight), Is.True, "weight changed on the way to nn.Conv2d");
            Assert.That(TestTensors.Identical(back.weight, ours.weight), Is.True, "weight changed on the way back");
            if (bias) Assert.That(TestTensors.Identical(back.bias!, ours.bias!), Is.True, "bias changed on the way back");
            Assert.That(TestTensors.RelativeError(back.forward(x), expected), Is.LessThanOrEqualTo(Float64Tolerance));
        });
    }

    // ---------------------------------------------------------------------------------------------
    // 5. Errors.
    // ---------------------------------------------------------------------------------------------

    private static void AssertRejected<TException>(Action call, string paramName, params string[] fragments)
        where TException : ArgumentException
    {
        var e = Assert.Throws(Is.InstanceOf<TException>(), call) as ArgumentException;
        Assert.Multiple(() =>
        {
            Assert.That(e!.ParamName, Is.EqualTo(paramName));
            foreach (var fragment in fragments)
                Assert.That(e.Message, Does.Contain(fragment));
        });
    }

    public static IEnumerable<TestCaseData> BadConstructorArguments()
    {
        TestCaseData Case(string name, Action build, string paramName, string fragment) =>
            new TestCaseData(build, paramName, fragment).SetArgDisplayNames(name);
        yield return Case("in_channels_0", () => new WeightStandardizedConv2d(0, 4, 3).Dispose(), "in_channels", "in_channels=0");
        yield return Case("out_channels_negative", () => new WeightStandardizedConv2d(3, -1, 3).Dispose(), "out_channels", "out_channels=-1");
        yield return Case("kernel_size_0", () => new WeightStandardizedConv2d(3, 4, 0).Dispose(), "kernel_size", "kernel_size=(0, 0)");
        yield return Case("kernel_size_pair", () => new WeightStandardizedConv2d(3, 4, (3, -2)).Dispose(), "kernel_size", "kernel_size=(3, -2)");
        yield return Case("stride_0", () => new WeightStandardizedConv2d(3, 4, 3, stride: 0).Dispose(), "stride", "stride=(0, 0)");
        yield return Case("padding_negative", () => new WeightStandardizedConv2d(3, 4, (3, 3), padding: (1, -1)).Dispose(), "padding", "padding=(1, -1)");
        yield return Case("dilation_0", () => new WeightStandardizedConv2d(3, 4, 3, dilation: 0).Dispose(), "dilation", "dilation=(0, 0)");
        yield return Case("groups_0", () => new WeightStandardizedConv2d(4, 4, 3, groups: 0).Dispose(), "groups", "groups=0");
        yield return Case("groups_not_dividing_in", () => new WeightStandardizedConv2d(4, 6, 3, groups: 3).Dispose(), "in_channels", "in_channels=4 and groups=3");
        yield return Case("groups_not_dividing_out", () => new WeightStandardizedConv2d(4, 6, 3, groups: 4).Dispose(), "out_channels", "out_channels=6 and groups=4");
        yield return Case("padding_mode_undefined", () => new WeightStandardizedConv2d(3, 4, 3, padding_mode: (PaddingModes)99).Dispose(), "padding_mode", "padding_mode=99");
        yield return Case("dtype_integer", () => new WeightStandardizedConv2d(3, 4, 3, dtype: ScalarType.Int32).Dispose(), "dtype", "dtype=Int32");
        yield return Case("eps_negative", () => new WeightStandardizedConv2d(3, 4, 3, eps: -1e-3).Dispose(), "eps", "eps=-0.001");
        yield return Case("eps_nan", () => new WeightStandardizedConv2d(3, 4, 3, eps: double.NaN).Dispose(), "eps", "eps=nan");
    }

    [TestCaseSource(nameof(BadConstructorArguments))]
    public void ConstructorRejectsBadArguments(Action build, string paramName, string fragment) =>
        AssertRejected<ArgumentException>(build, paramName, fragment);

    [Test]
    public void EpsSetterValidatesAndTakesEffect()
    {
        using var scope = torch.NewDisposeScope();
        using var m = new WeightStandardizedConv2d(3, 4, 3, dtype: ScalarType.Float64);
        AssertRejected<ArgumentOutOfRangeException>(() => m.eps = -1, "eps", "eps=-1.0");
        AssertRejected<ArgumentOutOfRangeException>(() => m.eps = double.NaN, "eps", "eps=nan");
        Assert.That(m.eps, Is.EqualTo(1e-5), "a rejected value must not be kept");

        // eps = 0.5 is far above the filters' variance (≈ 1 / (3 · 27)), so the output shows which eps was used.
        m.eps = 0.5;
        var x = torch.randn(new long[] { 1, 3, 5, 5 }, ScalarType.Float64);
        var c = new ConvCase(1, 3, 4, 5, 5, (3, 3), (1, 1), (0, 0), (1, 1), 1, true);
        Assert.Multiple(() =>
        {
            Assert.That(m.eps, Is.EqualTo(0.5));
            Assert.That(TestTensors.RelativeError(m.forward(x), Reference(c, x, m.weight, m.bias, 0.5)), Is.LessThanOrEqualTo(Float64Tolerance));
            Assert.That(m.ToString(), Does.EndWith(", eps=0.5)"));
        });
    }

    public static IEnumerable<TestCaseData> BadInputs()
    {
        TestCaseData Case(string name, Func<Tensor> input, params string[] fragments) =>
            new TestCaseData(input, fragments).SetArgDisplayNames(name);
        yield return Case("rank_2", () => torch.randn(3, 8), "3D (unbatched) or 4D (batched)", "[3, 8]");
        yield return Case("rank_5", () => torch.randn(new long[] { 1, 3, 2, 8, 8 }), "3D (unbatched) or 4D (batched)", "[1, 3, 2, 8, 8]");
        yield return Case("channels", () => torch.randn(2, 4, 8, 8), "3 channels", "[2, 4, 8, 8]");
        yield return Case("channels_unbatched", () => torch.randn(4, 8, 8), "3 channels", "[4, 8, 8]");
        yield return Case("integer", () => torch.ones(new long[] { 2, 3, 8, 8 }, ScalarType.Int32), "floating-point", "Int32");
        yield return Case("bool", () => torch.ones(new long[] { 2, 3, 8, 8 }, ScalarType.Bool), "floating-point", "Bool");
        yield return Case("float64_into_float32", () => torch.randn(new long[] { 2, 3, 8, 8 }, ScalarType.Float64), "weight's dtype (Float32)", "Float64");
        yield return Case("device", () => torch.empty(new long[] { 2, 3, 8, 8 }, device: torch.META), "module's device (cpu)", "input on meta");
        yield return Case("too_small", () => torch.randn(2, 3, 2, 8), "padded height (2 + 0 + 0)", "(3)");
        yield return Case("empty_spatial", () => torch.randn(2, 3, 0, 8), "non-empty spatial", "[2, 3, 0, 8]");
        yield return Case("sparse", () => torch.randn(2, 3, 8, 8).to_sparse(), "sparse");
    }

    [TestCaseSource(nameof(BadInputs))]
    public void ForwardRejectsBadInput(Func<Tensor> input, string[] fragments)
    {
        using var scope = torch.NewDisposeScope();
        using var m = new WeightStandardizedConv2d(3, 4, 3);
        var x = input();
        AssertRejected<ArgumentException>(() => m.forward(x), nameof(input), fragments);
    }

    [Test]
    public void ForwardRejectsNullAndDisposedInput()
    {
        using var scope = torch.NewDisposeScope();
        using var m = new WeightStandardizedConv2d(3, 4, 3);
        var disposed = torch.randn(1, 3, 5, 5);
        disposed.Dispose();
        Assert.That(() => m.forward(null!), Throws.InstanceOf<ArgumentNullException>().With.Property("ParamName").EqualTo("input"));
        AssertRejected<ArgumentException>(() => m.forward(disposed), "input", "disposed");
    }

    /// <summary>Reflect padding needs more input than padding, circular at least as much (libtorch's rules).</summary>
    [Test]
    public void ForwardRejectsInputTooSmallForItsPaddingMode()
    {
        using var scope = torch.NewDisposeScope();
        using var reflect = new WeightStandardizedConv2d(3, 4, 3, padding: 2, padding_mode: PaddingModes.Reflect);
        using var circular = new WeightStandardizedConv2d(3, 4, 3, padding: 3, padding_mode: PaddingModes.Circular);
        var x = torch.randn(1, 3, 2, 6);
        AssertRejected<ArgumentException>(() => reflect.forward(x), "input", "Reflect padding of 2", "[1, 3, 2, 6]");
        AssertRejected<ArgumentException>(() => circular.forward(x), "input", "Circular padding of 3", "[1, 3, 2, 6]");
        Assert.That(reflect.forward(torch.randn(1, 3, 3, 6)).shape, Is.EqualTo(new long[] { 1, 4, 5, 8 }), "reflect padding 2 of a height of 3 is fine");
    }

    /// <summary>
    /// The base class lets a caller replace the weight or change groups after construction; forward answers a
    /// module that no longer describes a convolution with an InvalidOperationException, not a native error.
    /// </summary>
    [Test]
    public void ForwardRejectsAnInconsistentModule()
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(1, 4, 6, 6);
        using var replaced = new WeightStandardizedConv2d(4, 4, 3);
        replaced.weight = new Parameter(torch.randn(4, 4, 2, 2));
        using var regrouped = new WeightStandardizedConv2d(4, 4, 3);
        regrouped.groups = 3;
        using var rebiased = new WeightStandardizedConv2d(4, 4, 3);
        rebiased.bias = new Parameter(torch.randn(5));
        using var restrided = new WeightStandardizedConv2d(4, 4, 3);
        restrided.stride = new long[] { 1, 0 };
        Assert.Multiple(() =>
        {
            Assert.That(() => replaced.forward(x), Throws.InvalidOperationException.With.Message.Contains("[4, 4, 3, 3]").And.Message.Contains("[4, 4, 2, 2]"));
            Assert.That(() => regrouped.forward(x), Throws.InvalidOperationException.With.Message.Contains("groups=3"));
            Assert.That(() => rebiased.forward(x), Throws.InvalidOperationException.With.Message.Contains("bias of shape [4]"));
            Assert.That(() => restrided.forward(x), Throws.InvalidOperationException.With.Message.Contains("stride=(1, 0)"));
        });
    }

    public static IEnumerable<TestCaseData> BadWeights()
    {
        TestCaseData Case(string name, Func<Tensor> weight, params string[] fragments) =>
            new TestCaseData(weight, fragments).SetArgDisplayNames(name);
        yield return Case("rank_1", () => torch.randn(6), "rank 2 or more", "[6]");
        yield return Case("integer", () => torch.ones(new long[] { 4, 3, 3, 3 }, ScalarType.Int64), "floating-point", "Int64");
        yield return Case("empty_filters", () => torch.randn(4, 0, 3, 3), "at least one element", "[4, 0, 3, 3]");
    }

    [TestCaseSource(nameof(BadWeights))]
    public void StandardizeWeightRejectsBadWeight(Func<Tensor> weight, string[] fragments)
    {
        using var scope = torch.NewDisposeScope();
        var w = weight();
        AssertRejected<ArgumentException>(() => WeightStandardizedConv2d.standardize_weight(w), nameof(weight), fragments);
    }

    [Test]
    public void StandardizeWeightRejectsNullAndBadEps()
    {
        using var scope = torch.NewDisposeScope();
        var w = torch.randn(4, 3, 3, 3);
        Assert.That(() => WeightStandardizedConv2d.standardize_weight(null!), Throws.InstanceOf<ArgumentNullException>().With.Property("ParamName").EqualTo("weight"));
        AssertRejected<ArgumentOutOfRangeException>(() => WeightStandardizedConv2d.standardize_weight(w, -1e-5), "eps", "eps=-1e-05");
    }

    // ---------------------------------------------------------------------------------------------
    // 6. Conversions, repr and training.
    // ---------------------------------------------------------------------------------------------

    /// <summary>.to(Float64) converts both parameters and the module runs on float64 input; so does dtype: Float64.</summary>
    [Test]
    public void ToFloat64AndDtypeArgumentGiveFloat64Module()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(112);
        using var converted = new WeightStandardizedConv2d(3, 4, 3, padding: 1);
        Assume.That(converted.weight.dtype, Is.EqualTo(ScalarType.Float32));
        converted.to(ScalarType.Float64);
        using var built = new WeightStandardizedConv2d(3, 4, 3, padding: 1, dtype: ScalarType.Float64);
        var c = new ConvCase(2, 3, 4, 6, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, true);
        var x = torch.randn(c.InputShape, ScalarType.Float64);
        foreach (var m in new[] { converted, built })
        {
            var y = m.forward(x);
            Assert.Multiple(() =>
            {
                Assert.That(m.parameters().Select(p => p.dtype), Is.All.EqualTo(ScalarType.Float64));
                Assert.That(m.state_dict().Keys, Is.EquivalentTo(s_parameterNames), "conversion must keep the registered names");
                Assert.That(y.dtype, Is.EqualTo(ScalarType.Float64));
                Assert.That(TestTensors.RelativeError(y, Reference(c, x, m.weight, m.bias, m.eps)), Is.LessThanOrEqualTo(Float64Tolerance));
            });
        }
    }

    [Test]
    public void ToStringIsPyTorchsConv2dReprWithEps()
    {
        using var plain = new WeightStandardizedConv2d(3, 64, 3, padding: 1, bias: false);
        using var full = new WeightStandardizedConv2d(4, 8, (3, 5), stride: (2, 1), padding: (0, 0), dilation: (1, 2), padding_mode: PaddingModes.Reflect, groups: 2, eps: 1e-3);
        using var valid = new WeightStandardizedConv2d(3, 8, 1);
        Assert.Multiple(() =>
        {
            Assert.That(plain.ToString(), Is.EqualTo("WeightStandardizedConv2d(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False, eps=1e-05)"));
            Assert.That(full.ToString(), Is.EqualTo("WeightStandardizedConv2d(4, 8, kernel_size=(3, 5), stride=(2, 1), dilation=(1, 2), groups=2, padding_mode=reflect, eps=0.001)"));
            Assert.That(valid.ToString(), Is.EqualTo("WeightStandardizedConv2d(3, 8, kernel_size=(1, 1), stride=(1, 1), eps=1e-05)"));
        });
    }

    /// <summary>
    /// A few SGD steps on a small regression problem lower the loss, inside a Sequential with our GroupNorm
    /// (the BiT pairing), and the weight itself moves.
    /// </summary>
    [Test]
    public void TrainsWithSgdInsideSequential()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(113);
        var conv = new WeightStandardizedConv2d(3, 8, 3, padding: 1);
        using var model = torch.nn.Sequential(("conv", conv), ("norm", new GroupNorm(4, 8)), ("relu", torch.nn.ReLU()));
        using var optimizer = torch.optim.SGD(model.parameters(), 0.1);
        var x = torch.randn(4, 3, 8, 8);
        var target = torch.rand(4, 8, 8, 8);
        var before = conv.weight.detach().clone();

        double Step()
        {
            using var inner = torch.NewDisposeScope();
            optimizer.zero_grad();
            var loss = torch.nn.functional.mse_loss(model.forward(x), target);
            loss.backward();
            optimizer.step();
            return loss.item<float>();
        }
        double first = Step();
        Assert.That(conv.weight.grad, Is.Not.Null, "no gradient reached the weight: the standardization is detached");
        double last = first;
        for (int i = 0; i < 9; i++) last = Step();
        TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"loss {first:F5} → {last:F5}"));
        Assert.Multiple(() =>
        {
            Assert.That(model.state_dict().Keys, Is.SupersetOf(s_convParameterNames));
            Assert.That(last, Is.LessThan(0.9 * first));
            Assert.That(TestTensors.Identical(conv.weight, before), Is.False, "the optimizer did not change the weight");
        });
    }

    // ---------------------------------------------------------------------------------------------
    // The reference and helpers.
    // ---------------------------------------------------------------------------------------------

    private static WeightStandardizedConv2d Build(ConvCase c, ScalarType dtype) =>
        new(c.In, c.Out, c.Kernel, c.Stride, c.Padding, c.Dilation, c.Mode, c.Groups, c.Bias, dtype: dtype);

    /// <summary>
    /// Ŵ in float64 from explicit sums: mean = ΣW_o / n, var = Σ(W_o − mean)² / n (the biased variance), then
    /// (W_o − mean) / sqrt(var + eps). Differentiable, for the autograd comparison.
    /// </summary>
    private static Tensor ReferenceStandardize(Tensor weight, double eps)
    {
        var w = weight.to(ScalarType.Float64);
        long n = w.numel() / w.size(0);
        var filters = w.reshape(w.size(0), n);
        var mean = filters.sum(1, keepdim: true) / n;
        var centred = filters - mean;
        var variance = (centred * centred).sum(1, keepdim: true) / n;
        return (centred / (variance + eps).sqrt()).reshape(w.shape);
    }

    /// <summary>conv2d(x, Ŵ, b) in float64 with the case's zero padding (the reference never pads otherwise).</summary>
    private static Tensor Reference(ConvCase c, Tensor x, Tensor weight, Tensor? bias, double eps) =>
        ReferenceConv(c, x.to(ScalarType.Float64), ReferenceStandardize(weight, eps), bias?.to(ScalarType.Float64));

    private static Tensor ReferenceConv(ConvCase c, Tensor x, Tensor w, Tensor? bias)
    {
        if (c.Mode != PaddingModes.Zeros)
            throw new ArgumentException("The reference pads with zeros only.", nameof(c));
        return torch.nn.functional.conv2d(x, w, bias, new[] { c.Stride.Item1, c.Stride.Item2 }, new[] { c.Padding.Item1, c.Padding.Item2 },
            new[] { c.Dilation.Item1, c.Dilation.Item2 }, c.Groups);
    }

    /// <summary>
    /// Filters of shape <paramref name="shape"/> in float64, each with its own scale from 0.005 to 0.5 (log-uniform)
    /// and a mean of up to 3 of its standard deviations.
    /// </summary>
    private static Tensor RandomFilters(long[] shape)
    {
        var perFilter = new long[shape.Length];
        Array.Fill(perFilter, 1L);
        perFilter[0] = shape[0];
        var scale = ((torch.rand(perFilter, ScalarType.Float64) * 2 - 2.3) * Math.Log(10)).exp();
        var offset = (torch.rand(perFilter, ScalarType.Float64) * 6 - 3) * scale;
        return torch.randn(shape, ScalarType.Float64) * scale + offset;
    }

    /// <summary>κ = max over filters of max|W_o| / std(W_o): how many leading digits the centring cancels.</summary>
    private static double Conditioning(Tensor weight)
    {
        var filters = weight.to(ScalarType.Float64).reshape(weight.size(0), -1);
        var std = filters.std(1, unbiased: false);
        return (filters.abs().max(1).values / std).max().item<double>();
    }

    private static void SetWeight(Convolution m, Tensor values)
    {
        using var noGrad = torch.no_grad();
        m.weight.copy_(values);
    }

    private static void CopyStandardized(WeightStandardizedConv2d from, Convolution to)
    {
        using var noGrad = torch.no_grad();
        to.weight.copy_(WeightStandardizedConv2d.standardize_weight(from.weight, from.eps));
        to.bias!.copy_(from.bias!);
    }
}
