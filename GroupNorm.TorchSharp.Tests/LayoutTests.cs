using GroupNormalization.Kernels;
using GroupNormalization.Tests.Parity;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests;

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
        using (path == KernelPath.Generic ? KernelSelector.Force(KernelKind.DeviceGeneric) : null)
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
}
