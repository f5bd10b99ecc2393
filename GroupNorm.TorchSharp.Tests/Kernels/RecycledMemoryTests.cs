using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Kernels;

/// <summary>
/// The fused kernels' outputs in recycled memory (<see cref="Memory"/>): they behave as libtorch's own
/// tensors (in-place ops after the norm, both layouts, with a graph), blocks come back and are reused, the
/// idle memory does not grow from one identical step to the next, and turning recycling off stops it.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class RecycledMemoryTests
{
    [TearDown]
    public void Restore()
    {
        Memory.recycle_outputs = true;
        Memory.empty_cache();
    }

    /// <summary>
    /// ReLU and the residual add in place on our output, as ResNet blocks write them: a view made inside the
    /// Function would make autograd refuse both. The gradients must still be libtorch's.
    /// </summary>
    [Test]
    public void OutputsTakeInPlaceOpsInTheGraph([Values(Layout.Contiguous, Layout.ChannelsLast)] Layout layout)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(2);
        // 32 KiB in float32: recycled (RecycledMemory.SmallestRecycledBytes).
        var shape = new long[] { 2, 16, 16, 16 };
        var x = TestTensors.Input(shape, layout, ScalarType.Float32, torch.CPU);
        var r = torch.randn(shape);
        var dy = torch.randn(shape);
        var (w, b) = TestTensors.Parameters(Affine.Both, 16, ScalarType.Float32, torch.CPU);

        var xo = x.detach().requires_grad_();
        var ours = Functional.group_norm(xo, 4, w, b).add_(r).relu_();
        var dxOurs = torch.autograd.grad(new[] { ours }, new[] { xo }, new[] { dy })[0];
        var xn = x.detach().requires_grad_();
        var native = torch.nn.functional.group_norm(xn, 4, w, b).add_(r).relu_();
        var dxNative = torch.autograd.grad(new[] { native }, new[] { xn }, new[] { dy })[0];

        Assert.Multiple(() =>
        {
            Assert.That(TestTensors.RelativeError(ours, native), Is.LessThanOrEqualTo(ParityCheck.Float32Tolerance), "y");
            Assert.That(TestTensors.RelativeError(dxOurs, dxNative), Is.LessThanOrEqualTo(ParityCheck.Float32Tolerance), "dx");
            Assert.That(TestTensors.IsChannelsLast(ours), Is.EqualTo(layout == Layout.ChannelsLast), "y keeps the input's layout");
        });
    }

    /// <summary>
    /// Two identical training steps: after the first, its outputs' blocks are idle; the second reuses them,
    /// so the idle memory is the same afterwards (a pool that never reused would hold three blocks).
    /// </summary>
    [Test]
    public void IdenticalStepsReuseTheSameBlocks([Values(Layout.Contiguous, Layout.ChannelsLast)] Layout layout)
    {
        Memory.empty_cache();
        Step(layout);
        long afterFirst = Memory.cached_bytes;
        Step(layout);
        long afterSecond = Memory.cached_bytes;
        // y of (4, 32, 8, 8) float32, 32 KiB; dx's handle is held until the next call (ReturnedGradients), and
        // its block comes back then, in time for the second step to reuse it.
        Assert.That(afterFirst, Is.GreaterThanOrEqualTo(4 * 32 * 8 * 8 * sizeof(float)), "blocks came back when the step's tensors died");
        Assert.That(afterSecond, Is.EqualTo(afterFirst), "the second step reused the first step's blocks");
        Memory.empty_cache();
        Assert.That(Memory.cached_bytes, Is.Zero, "empty_cache frees every idle block");
    }

    /// <summary>Outputs below <c>RecycledMemory.SmallestRecycledBytes</c> (16 KiB) come from libtorch's allocator.</summary>
    [Test]
    public void SmallOutputsAreNotRecycled()
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(2, 8, 4, 4);
        // The first call releases gradients an earlier test's backward left held (ReturnedGradients).
        Functional.group_norm(x, 4).Dispose();
        Memory.empty_cache();
        Functional.group_norm(x, 4).Dispose();
        Assert.That(Memory.cached_bytes, Is.Zero);
    }

    [Test]
    public void TurnedOffNothingIsKept()
    {
        Memory.empty_cache();
        Memory.recycle_outputs = false;
        Step(Layout.Contiguous);
        Assert.That(Memory.cached_bytes, Is.Zero);
    }

    private static void Step(Layout layout)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(4);
        var shape = new long[] { 4, 32, 8, 8 };
        var x = TestTensors.Input(shape, layout, ScalarType.Float32, torch.CPU).requires_grad_();
        var y = Functional.group_norm(x, 4, activation: Activation.SiLU);
        torch.autograd.grad(new[] { y }, new[] { x }, new[] { torch.randn(shape) });
    }
}
