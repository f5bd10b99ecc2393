using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Threading.Tasks;
using GroupNormalization.Autograd;
using GroupNormalization.Kernels;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Parity;

/// <summary>
/// Ours against libtorch's native group_norm (forward y and the gradients dx, dweight, dbias) on both of
/// our kernel families, over <see cref="ParityCase.Sweep"/>.
/// </summary>
[TestFixture]
public sealed class ParityTests
{
    private const double Eps = 1e-5;

    public static IEnumerable<TestCaseData> SweepCases()
    {
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.Float64 })
            foreach (var path in new[] { KernelPath.Default, KernelPath.Generic })
                foreach (var c in ParityCase.Sweep)
                    yield return new TestCaseData(c, dtype, path).SetArgDisplayNames($"{path}_{DtypeName(dtype)}_{c.Name}");
    }

    [TestCaseSource(nameof(SweepCases))]
    public void MatchesNativeGroupNorm(ParityCase c, ScalarType dtype, KernelPath path) =>
        ParityCheck.Run(c, dtype, path, torch.CPU);

    /// <summary>The half-precision cases: each rank, layout and affine mode, and groups of two elements.</summary>
    internal static readonly ParityCase[] HalfShapes =
    {
        new(new long[] { 2, 6, 4, 4 }, 3),
        new(new long[] { 2, 8, 7, 7 }, 4, Layout: Layout.ChannelsLast),
        new(new long[] { 2, 6, 3, 4, 5 }, 3, Affine.BiasOnly),
        new(new long[] { 4, 32, 8, 8 }, 8),
        new(new long[] { 8, 6 }, 3, Affine.None),
    };

    public static IEnumerable<TestCaseData> HalfCases()
    {
        foreach (var path in new[] { KernelPath.Default, KernelPath.Generic })
            foreach (var dtype in new[] { ScalarType.Float16, ScalarType.BFloat16 })
                foreach (double mean in new[] { 0.0, 1000.0 })
                    foreach (var c in HalfShapes)
                        yield return new TestCaseData(c, dtype, path, mean).SetArgDisplayNames($"{path}_{DtypeName(dtype)}_mean{mean}_{c.Name}");
    }

    /// <summary>
    /// float16 and bfloat16 on both kernel families, the device-generic one being CUDA's, held to one bound:
    /// the float64 answer for the same half values, within <see cref="ParityCheck.HalfPrecisionBound"/>. At mean 1000 the
    /// groups sit hundreds to thousands of standard deviations from 0.
    /// </summary>
    [TestCaseSource(nameof(HalfCases))]
    public void HalfPrecisionIsWithinOneRoundingOfFloat64(ParityCase c, ScalarType dtype, KernelPath path, double mean) =>
        ParityCheck.RunHalf(c, dtype, path, torch.CPU, mean);
    public static IEnumerable<TestCaseData> EmptyBatchCases()
    {
        foreach (var path in new[] { KernelPath.Default, KernelPath.Generic })
            foreach (var shape in new[] { new long[] { 0, 6 }, new long[] { 0, 6, 4 }, new long[] { 0, 6, 4, 4 }, new long[] { 0, 6, 2, 3, 4 } })
                yield return new TestCaseData(shape, path).SetArgDisplayNames($"{path}_{string.Join("x", shape)}");
    }

    /// <summary>N = 0: an empty output of the right shape, and a backward that runs and yields zero grads.</summary>
    [TestCaseSource(nameof(EmptyBatchCases))]
    public void EmptyBatchGivesEmptyOutputAndZeroParameterGrads(long[] shape, KernelPath path)
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(shape);
        var (w, b) = TestTensors.Parameters(Affine.Both, shape[1], ScalarType.Float32, torch.CPU);
        var result = Oracle.Ours(path, x, 3, w, b, Eps, torch.randn(shape));
        Assert.Multiple(() =>
        {
            Assert.That(result.Y.shape, Is.EqualTo(shape));
            Assert.That(result.Y.dtype, Is.EqualTo(ScalarType.Float32));
            Assert.That(result.Dx!.shape, Is.EqualTo(shape));
            Assert.That(result.Dweight!.shape, Is.EqualTo(new[] { shape[1] }));
            Assert.That(result.Dbias!.shape, Is.EqualTo(new[] { shape[1] }));
            Assert.That(result.Dweight!.abs().max().item<float>(), Is.Zero);
            Assert.That(result.Dbias!.abs().max().item<float>(), Is.Zero);
        });
    }

    /// <summary>
    /// The kernel is chosen at forward time and kept in the autograd context, so forcing the generic path
    /// around forward alone decides backward too, even when backward runs on a thread where the
    /// [ThreadStatic] force is not set. Were it re-selected there, backward would run the fused kernel on
    /// the generic kernel's float32 statistics (the fused kernel saves float64 ones).
    /// </summary>
    [Test]
    public void ForcingAroundForwardAloneDecidesBackward([Values(ScalarType.Float32, ScalarType.Float64)] ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(5);
        var x = torch.randn(new long[] { 2, 8, 6, 6 }, dtype);
        var (w, b) = TestTensors.Parameters(Affine.Both, 8, dtype, torch.CPU);
        var dy = torch.randn(x.shape, dtype);
        var forcedBoth = Oracle.Ours(KernelPath.Generic, x, 4, w, b, Eps, dy);

        var xl = x.detach().requires_grad_();
        var wl = w!.detach().requires_grad_();
        var bl = b!.detach().requires_grad_();
        Tensor y;
        using (KernelOverride.Force(kernel: KernelKind.DeviceGeneric))
            y = Functional.group_norm(xl, 4, wl, bl, Eps);
        var grads = Task.Run(() => torch.autograd.grad(new[] { y }, new[] { xl, wl, bl }, new[] { dy })).GetAwaiter().GetResult();

        Assert.Multiple(() =>
        {
            Assert.That(TestTensors.Identical(y, forcedBoth.Y), Is.True, "y");
            Assert.That(TestTensors.Identical(grads[0], forcedBoth.Dx!), Is.True, "dx");
            Assert.That(TestTensors.Identical(grads[1], forcedBoth.Dweight!), Is.True, "dweight");
            Assert.That(TestTensors.Identical(grads[2], forcedBoth.Dbias!), Is.True, "dbias");
        });
        foreach (var g in grads) g.Dispose();
    }

    internal static string DtypeName(ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => "f32",
        ScalarType.Float64 => "f64",
        ScalarType.Float16 => "f16",
        ScalarType.BFloat16 => "bf16",
        _ => dtype.ToString(),
    };
}

/// <summary>The body of one parity case, shared by the CPU and CUDA fixtures.</summary>
internal static class ParityCheck
{
    // Both sides reduce up to 150,000 elements per group or channel and then apply a few element-wise
    // operations; in units of each side's roundoff u the measured worst over every parity sweep is 18
    // (float32: 1.05e-6 of the output's scale) and 54 (float64: 6.0e-15), because libtorch's float32 kernel
    // sums in float32 and ours in float64, while in float64 both sum in float64 in different orders. 168
    // roundings, 3× the larger count, gives 1.0e-5 and 1.9e-14: room for summation order, not for a wrong
    // term (a dropped ε is 1e-5 of σ², a float32 statistic 1e-8 of the result in a float64 call).
    private const double RoundingsAllowed = 168;
    public static readonly double Float32Tolerance = RoundingsAllowed * Math.Pow(2, -24);
    public static readonly double Float64Tolerance = RoundingsAllowed * Math.Pow(2, -53);

    public static void Run(ParityCase c, ScalarType dtype, KernelPath path, Device device, string? label = null)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(c.Name.Length * 31 + c.Shape.Sum(s => (int)s));
        var x = TestTensors.Input(c.Shape, c.Layout, dtype, device);
        if (c.Layout is Layout.Transposed or Layout.Sliced)
            Assert.That(x.is_contiguous() || TestTensors.IsChannelsLast(x), Is.False, "the case must build a non-dense input");
        var (w, b) = TestTensors.Parameters(c.Affine, c.Shape[1], dtype, device);
        var dy = torch.randn(c.Shape, dtype, device);

        var expected = Oracle.Native(x, c.Groups, w, b, 1e-5, dy);
        var actual = Oracle.Ours(path, x, c.Groups, w, b, 1e-5, dy);
        Assert.That(actual.Forward, Is.EqualTo(ForwardRoute.Graph), "forward recorded a graph node");

        double tolerance = dtype == ScalarType.Float64 ? Float64Tolerance : Float32Tolerance;
        AssertClose(actual, expected, tolerance, label ?? device.type.ToString(), path, dtype);
        Assert.Multiple(() =>
        {
            AssertKept(actual, dtype, c.Layout);
            Assert.That(actual.Y.device.ToString(), Is.EqualTo(x.device.ToString()));
        });
    }

    /// <summary>
    /// A half-precision case against float64 on the same (exactly widened) values: every output within
    /// <see cref="HalfPrecisionBound"/>, and y and dx in the input's dtype and layout.
    /// </summary>
    public static void RunHalf(ParityCase c, ScalarType dtype, KernelPath path, Device device, double mean)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(11);
        var x = (TestTensors.Input(c.Shape, c.Layout, ScalarType.Float32, device) + mean).to(dtype);
        var (w, b) = TestTensors.Parameters(c.Affine, c.Shape[1], dtype, device);
        var dy = torch.randn(c.Shape, dtype, device);

        var exact = Oracle.Native(x.to(ScalarType.Float64), c.Groups, w?.to(ScalarType.Float64), b?.to(ScalarType.Float64), 1e-5, dy.to(ScalarType.Float64));
        var actual = Oracle.Ours(path, x, c.Groups, w, b, 1e-5, dy);

        double bound = HalfPrecisionBound(x, c.Groups, 1e-5, dtype);
        TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"bound {bound:E2}"));
        AssertClose(actual, exact, bound, device.type.ToString(), path, dtype);
        Assert.Multiple(() => AssertKept(actual, dtype, c.Layout));
    }

    /// <summary>y and dx in the input's dtype, and in its layout (<see cref="AssertLayout"/>).</summary>
    private static void AssertKept(GroupNormResult actual, ScalarType dtype, Layout layout)
    {
        Assert.That(actual.Y.dtype, Is.EqualTo(dtype));
        Assert.That(actual.Dx!.dtype, Is.EqualTo(dtype));
        AssertLayout(actual, layout, "");
    }

    /// <summary>
    /// The error, relative to max|exact|, of an output computed in float32 from half-precision values and
    /// rounded once to <paramref name="dtype"/>: the rounding, u = 2^-11 (float16, 11 significant bits) or
    /// 2^-8 (bfloat16, 8), plus <see cref="Float32Work"/>. The fused path meets it with float64
    /// statistics; the device-generic path, with float32 statistics, only because it centres x on μ
    /// before scaling.
    /// </summary>
    public static double HalfPrecisionBound(Tensor x, long groups, double eps, ScalarType dtype) =>
        UnitRoundoff(dtype) + Float32Work(x, groups, eps);

    /// <summary>Half the distance between adjacent values of <paramref name="dtype"/> near 1: 2^-p for p significant bits.</summary>
    public static double UnitRoundoff(ScalarType dtype) => dtype switch
    {
        ScalarType.Float16 => Math.Pow(2, -11),
        ScalarType.BFloat16 => Math.Pow(2, -8),
        ScalarType.Float32 => Math.Pow(2, -24),
        ScalarType.Float64 => Math.Pow(2, -53),
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, null),
    };

    /// <summary>
    /// What float32 arithmetic may add, relative to an output's scale, before the final rounding:
    /// u32·(log2 R + 4)·(1 + A). R is the longest reduction (a group, or a channel's N·S terms for dweight
    /// and dbias), whose pairwise sum loses about log2 R roundings; 4 covers the element-wise formula. A is
    /// the largest max|x| / √(σ² + ε) of a group: μ in float32 is off by u32 of |x|, which is A·u32 of the
    /// group's own scale once x is centred. A group of equal values is left out: its float32 mean is the value
    /// itself, exactly.
    /// </summary>
    public static double Float32Work(Tensor x, long groups, double eps)
    {
        long n = x.shape[0];
        long spatial = x.numel() / Math.Max(1, n * x.shape[1]);
        long reduction = Math.Max(x.numel() / Math.Max(1, n * groups), n * spatial);
        return UnitRoundoff(ScalarType.Float32) * (Math.Log2(Math.Max(2, reduction)) + 4) * (1 + Amplification(x, groups, eps));
    }

    /// <summary>
    /// A = the largest max|x| / √(σ² + ε) over the (n, g) groups of x, groups of equal values left out: how
    /// many of its own standard deviations a group sits from 0, and so how much a rounding of x's size (in
    /// μ, or in σ² formed from differences of x) weighs against the group's normalized values.
    /// </summary>
    public static double Amplification(Tensor x, long groups, double eps)
    {
        using var scope = torch.NewDisposeScope();
        var grouped = x.detach().cpu().to(ScalarType.Float64).reshape(x.shape[0], groups, -1);
        if (grouped.numel() == 0) return 0;
        var (variance, _) = grouped.var_mean(new long[] { 2 }, unbiased: false);
        var largest = grouped.abs().amax(new long[] { 2 });
        return (largest / (variance + eps).sqrt()).masked_fill(variance.eq(0), 0).max().item<double>();
    }

    /// <summary>y and dx keep a channels_last input's format, and y of a contiguous input is contiguous.</summary>
    public static void AssertLayout(GroupNormResult actual, Layout layout, string prefix)
    {
        if (layout == Layout.ChannelsLast)
        {
            Assert.That(TestTensors.IsChannelsLast(actual.Y), Is.True, $"{prefix}y lost the channels_last format");
            Assert.That(TestTensors.IsChannelsLast(actual.Dx!), Is.True, $"{prefix}dx lost the channels_last format");
        }
        if (layout == Layout.Contiguous)
            Assert.That(actual.Y.is_contiguous(), Is.True, $"{prefix}y of a contiguous input is not contiguous");
    }

    /// <summary>The relative error of each output the reference has: y, dx, and dweight and dbias when present.</summary>
    public static List<(string Name, double Error)> Errors(GroupNormResult actual, GroupNormResult expected)
    {
        var errors = new List<(string Name, double Error)>
        {
            ("y", TestTensors.RelativeError(actual.Y, expected.Y)),
            ("dx", TestTensors.RelativeError(actual.Dx!, expected.Dx!)),
        };
        if (expected.Dweight is not null) errors.Add(("dweight", TestTensors.RelativeError(actual.Dweight!, expected.Dweight)));
        if (expected.Dbias is not null) errors.Add(("dbias", TestTensors.RelativeError(actual.Dbias!, expected.Dbias)));
        return errors;
    }

    public static void AssertClose(GroupNormResult actual, GroupNormResult expected, double tolerance, string device, KernelPath path, ScalarType dtype)
    {
        var errors = Errors(actual, expected);
        TestContext.Out.WriteLine(string.Join("  ", errors.Select(e => string.Create(CultureInfo.InvariantCulture, $"{e.Name}={e.Error:E2}"))));
        foreach (var (name, error) in errors) ParityReport.Record(device, path, dtype, name, error);

        Assert.Multiple(() =>
        {
            foreach (var (name, error) in errors)
                Assert.That(error, Is.LessThanOrEqualTo(tolerance), $"{name}: relative error against libtorch");
        });
    }
}
