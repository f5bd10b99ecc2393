using System.Collections.Generic;
using System.Threading.Tasks;
using GroupNormalization.Kernels;
using GroupNormalization.Tests.Support;
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
