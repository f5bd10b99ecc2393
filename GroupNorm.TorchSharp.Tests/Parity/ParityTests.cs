using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Threading.Tasks;
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

    public static IEnumerable<TestCaseData> HalfCases()
    {
        var cases = new ParityCase[]
        {
            new(new long[] { 2, 6, 4, 4 }, 3),
            new(new long[] { 2, 8, 7, 7 }, 4, Layout: Layout.ChannelsLast),
            new(new long[] { 2, 6, 3, 4, 5 }, 3, Affine.BiasOnly),
            new(new long[] { 4, 32, 8, 8 }, 8),
            new(new long[] { 8, 6 }, 3, Affine.None),
        };
        foreach (var path in new[] { KernelPath.Default, KernelPath.Generic })
            foreach (var dtype in new[] { ScalarType.Float16, ScalarType.BFloat16 })
                foreach (var c in cases)
                    yield return new TestCaseData(c, dtype, path).SetArgDisplayNames($"{path}_{DtypeName(dtype)}_{c.Name}");
    }

    /// <summary>
    /// Half inputs are computed in float32 on both paths (the fused kernels and the generic one), so the
    /// reference is the native kernel in float32 on the same (exactly upcast) values; what remains is the
    /// rounding of our results to the dtype.
    /// </summary>
    [TestCaseSource(nameof(HalfCases))]
    public void HalfPrecisionMatchesNativeInFloat32(ParityCase c, ScalarType dtype, KernelPath path)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(11);
        var x = TestTensors.Input(c.Shape, c.Layout, ScalarType.Float32, torch.CPU).to(dtype);
        var (w, b) = TestTensors.Parameters(c.Affine, c.Shape[1], dtype, torch.CPU);
        var dy = torch.randn(c.Shape, dtype, torch.CPU);

        var expected = Oracle.Native(x.to(ScalarType.Float32), c.Groups, w?.to(ScalarType.Float32), b?.to(ScalarType.Float32), Eps, dy.to(ScalarType.Float32));
        var actual = Oracle.Ours(path, x, c.Groups, w, b, Eps, dy);

        // One rounding to the dtype of a value ≤ max|reference|: 2^-9 for bfloat16 (8 significant bits),
        // 2^-12 for float16 (11 bits); the limits leave a few roundings of headroom.
        double tolerance = dtype == ScalarType.BFloat16 ? 1e-2 : 2e-3;
        ParityCheck.AssertClose(actual, expected, tolerance, "CPU", path, dtype);
        Assert.Multiple(() =>
        {
            Assert.That(actual.Y.dtype, Is.EqualTo(dtype));
            Assert.That(actual.Dx!.dtype, Is.EqualTo(dtype));
            if (c.Layout == Layout.ChannelsLast)
                Assert.That(TestTensors.IsChannelsLast(actual.Y), Is.True, "y lost the channels_last format");
        });
    }

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
        using (KernelSelector.Force(KernelKind.DeviceGeneric))
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
    // float32: each side rounds ~1e-7 per operation over reductions of up to 150,000 elements, and the
    // native kernel sums in float32; 1e-5 of the output's scale leaves room for that, not for a wrong
    // term. float64: the same argument at 2^-53 gives ~1e-12; 1e-10 keeps two orders of headroom.
    public const double Float32Tolerance = 1e-5;
    public const double Float64Tolerance = 1e-10;

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

        double tolerance = dtype == ScalarType.Float64 ? Float64Tolerance : Float32Tolerance;
        AssertClose(actual, expected, tolerance, label ?? device.type.ToString(), path, dtype);
        Assert.Multiple(() =>
        {
            Assert.That(actual.Y.dtype, Is.EqualTo(dtype));
            Assert.That(actual.Y.device.ToString(), Is.EqualTo(x.device.ToString()));
            Assert.That(actual.Dx!.dtype, Is.EqualTo(dtype));
            AssertLayout(actual, c.Layout, "");
        });
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
