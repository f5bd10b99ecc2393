using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using GroupNormalization.Autograd;
using GroupNormalization.Tests.Parity;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Support;

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

    /// <summary>The relative error of each output the reference has: y, dx, and dweight, dbias and dresidual when present.</summary>
    public static List<(string Name, double Error)> Errors(GroupNormResult actual, GroupNormResult expected)
    {
        var errors = new List<(string Name, double Error)>
        {
            ("y", TestTensors.RelativeError(actual.Y, expected.Y)),
            ("dx", TestTensors.RelativeError(actual.Dx!, expected.Dx!)),
        };
        if (expected.Dweight is not null) errors.Add(("dweight", TestTensors.RelativeError(actual.Dweight!, expected.Dweight)));
        if (expected.Dbias is not null) errors.Add(("dbias", TestTensors.RelativeError(actual.Dbias!, expected.Dbias)));
        if (expected.Dresidual is not null) errors.Add(("dresidual", TestTensors.RelativeError(actual.Dresidual!, expected.Dresidual)));
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
