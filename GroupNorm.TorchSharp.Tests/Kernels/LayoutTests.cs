using GroupNormalization.Kernels;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Kernels;

/// <summary>
/// Outputs and gradients keep the input's memory format, dtype and device, on both kernel families,
/// including the no-grad (inference) route that skips the autograd node.
/// </summary>
[TestFixture]
public sealed class LayoutTests
{
    [Test]
    public void ChannelsLastInputGivesChannelsLastOutputAndGradient(
        [Values] KernelPath path,
        [Values(ScalarType.Float32, ScalarType.Float64, ScalarType.BFloat16)] ScalarType dtype,
        [Values(4, 5)] int rank)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(81);
        var shape = rank == 4 ? new long[] { 2, 6, 5, 7 } : new long[] { 2, 6, 3, 4, 5 };
        var x = TestTensors.Input(shape, Layout.ChannelsLast, dtype, torch.CPU);
        Assume.That(TestTensors.IsChannelsLast(x) && !x.is_contiguous(), Is.True);
        var (w, b) = TestTensors.Parameters(Affine.Both, 6, dtype, torch.CPU);

        var result = Oracle.Ours(path, x, 3, w, b, 1e-5, torch.randn(shape, dtype));
        Tensor inference;
        using (torch.no_grad())
        using (path.Force())
            inference = Functional.group_norm(x, 3, w, b);

        Assert.Multiple(() =>
        {
            Assert.That(TestTensors.IsChannelsLast(result.Y), Is.True, "y");
            Assert.That(TestTensors.IsChannelsLast(result.Dx!), Is.True, "dx");
            Assert.That(TestTensors.IsChannelsLast(inference), Is.True, "y under no_grad");
            Assert.That(result.Y.dtype, Is.EqualTo(dtype));
            Assert.That(result.Dx!.dtype, Is.EqualTo(dtype));
            Assert.That(result.Dweight!.dtype, Is.EqualTo(dtype));
            Assert.That(result.Y.device_type, Is.EqualTo(DeviceType.CPU));
        });
    }

    [Test]
    public void ContiguousInputGivesContiguousOutputAndGradient([Values] KernelPath path, [Values(2, 3, 4, 5)] int rank)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(82);
        var shape = new long[] { 2, 6, 3, 4, 5 }[..rank];
        var x = torch.randn(shape);
        var result = Oracle.Ours(path, x, 2, null, null, 1e-5, torch.randn(shape));
        Assert.Multiple(() =>
        {
            Assert.That(result.Y.is_contiguous(), Is.True, "y");
            Assert.That(result.Dx!.is_contiguous(), Is.True, "dx");
            Assert.That(result.Y.shape, Is.EqualTo(shape));
        });
    }

    /// <summary>γ and β may be strided views (every other entry of a larger tensor), with or without a graph.</summary>
    [Test]
    public void StridedWeightAndBiasGiveTheBuiltInsResult([Values] KernelPath path, [Values] bool recordGraph)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(83);
        var shape = new long[] { 2, 6, 4, 5 };
        var x = torch.randn(shape);
        var w = torch.randn(12).slice(0, 0, 12, 2);
        var b = torch.randn(12).slice(0, 1, 12, 2);
        Assume.That(w.is_contiguous() || b.is_contiguous(), Is.False);
        var dy = recordGraph ? torch.randn(shape) : null;

        GroupNormResult ours;
        using (recordGraph ? null : torch.no_grad())
            ours = Oracle.Ours(path, x, 3, w, b, 1e-5, dy);
        var expected = Oracle.Native(x, 3, w, b, 1e-5, dy);

        Assert.Multiple(() =>
        {
            Assert.That(TestTensors.RelativeError(ours.Y, expected.Y), Is.LessThan(1e-5), "y");
            if (!recordGraph) return;
            Assert.That(TestTensors.RelativeError(ours.Dx!, expected.Dx!), Is.LessThan(1e-5), "dx");
            Assert.That(TestTensors.RelativeError(ours.Dweight!, expected.Dweight!), Is.LessThan(1e-5), "dweight");
            Assert.That(TestTensors.RelativeError(ours.Dbias!, expected.Dbias!), Is.LessThan(1e-5), "dbias");
        });
    }

    /// <summary>The incoming gradient need not share x's layout (it comes from whatever op follows).</summary>
    [Test]
    public void GradientInAnotherLayoutThanTheInput(
        [Values] KernelPath path,
        [Values(ScalarType.Float32, ScalarType.Float64)] ScalarType dtype,
        [Values(Layout.Contiguous, Layout.ChannelsLast)] Layout xLayout,
        [Values(Layout.ChannelsLast, Layout.Transposed)] Layout dyLayout)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(83);
        var shape = new long[] { 2, 6, 5, 7 };
        var x = TestTensors.Input(shape, xLayout, dtype, torch.CPU);
        var dy = TestTensors.Input(shape, dyLayout, dtype, torch.CPU);
        var (w, b) = TestTensors.Parameters(Affine.Both, 6, dtype, torch.CPU);
        var expected = Oracle.Native(x, 3, w, b, 1e-5, dy);
        var actual = Oracle.Ours(path, x, 3, w, b, 1e-5, dy);
        double tolerance = dtype == ScalarType.Float64 ? ParityCheck.Float64Tolerance : ParityCheck.Float32Tolerance;
        ParityCheck.AssertClose(actual, expected, tolerance, "CPU", path, dtype);
        if (xLayout == Layout.ChannelsLast)
            Assert.That(TestTensors.IsChannelsLast(actual.Dx!), Is.True, "dx follows x, not dy");
    }

    /// <summary>
    /// The sweep's two paths must really be two kernels: the default picks the fused one for CPU
    /// float32, float64, float16 and bfloat16 in any layout, and the force overrides it.
    /// </summary>
    [Test]
    public void KernelSelectionFollowsDtypeAndForce(
        [Values(ScalarType.Float32, ScalarType.Float64, ScalarType.Float16, ScalarType.BFloat16)] ScalarType dtype,
        [Values(Layout.Contiguous, Layout.ChannelsLast, Layout.Sliced)] Layout layout)
    {
        using var scope = torch.NewDisposeScope();
        var x = TestTensors.Input(new long[] { 2, 6, 4, 4 }, layout, dtype, torch.CPU);
        var expected = KernelKind.CpuFused;
        Assert.That(KernelSelector.Select(x).Kind, Is.EqualTo(expected));
        using (KernelOverride.Force(kernel: KernelKind.DeviceGeneric))
            Assert.That(KernelSelector.Select(x).Kind, Is.EqualTo(KernelKind.DeviceGeneric));
        Assert.That(KernelSelector.Select(x).Kind, Is.EqualTo(expected), "the force must end with its scope");
    }

    [Test]
    public void OnlyTheGenericKernelCanBeForced() =>
        Assert.That(() => KernelOverride.Force(kernel: KernelKind.CpuFused), Throws.ArgumentException);
}
