using System.Linq;
using NUnit.Framework;
using TorchSharp;

namespace GroupNormalization.Tests.Autograd;

/// <summary>
/// The gradients our backward hands to libtorch must not outlive their use: TorchSharp never releases the
/// handles a custom backward returns, so if they stayed in the caller's dispose scope every layer's dx
/// would stay allocated until the training step ends (the built-in frees it as soon as the layer below has
/// used it).
/// </summary>
public sealed class ReturnedGradientsTests
{
    /// <summary>
    /// Tensor handles alive after one backward through a chain of <paramref name="layers"/> GroupNorms, beyond
    /// those alive before it: the gradients autograd.grad returns, plus at most one call's own.
    /// </summary>
    private static long HandlesLeftByBackward(int layers)
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(new long[] { 2, 8, 16, 16 }).requires_grad_();
        var weights = Enumerable.Range(0, layers).Select(_ => (torch.rand(8) + 0.5).requires_grad_()).ToArray();
        var h = x;
        foreach (var w in weights) h = Functional.group_norm(h, 4, w, null);
        var loss = h.square().sum();
        long before = torch.Tensor.TotalCount;
        var grads = torch.autograd.grad(new[] { loss }, weights.Prepend(x).ToArray());
        return torch.Tensor.TotalCount - before - grads.Count;
    }

    [Test]
    public void BackwardThroughManyLayersHoldsNoMoreThanThroughFew()
    {
        HandlesLeftByBackward(1);
        long few = HandlesLeftByBackward(2), many = HandlesLeftByBackward(12);
        TestContext.Out.WriteLine($"handles left by backward: 2 layers {few}, 12 layers {many}");
        Assert.Multiple(() =>
        {
            Assert.That(many, Is.EqualTo(few), "every layer's gradients stayed alive until the scope ended");
            Assert.That(many, Is.LessThanOrEqualTo(3), "more than one call's dx, dweight and dbias held");
        });
    }

    /// <summary>The last handles held are released by the next GroupNorm call on the thread, forward or backward.</summary>
    [Test]
    public void TheNextCallReleasesTheLastGradients()
    {
        HandlesLeftByBackward(2);
        long held = torch.Tensor.TotalCount;
        using (var scope = torch.NewDisposeScope())
        using (torch.no_grad())
            Functional.group_norm(torch.randn(2, 8, 4, 4), 4);
        Assert.That(torch.Tensor.TotalCount, Is.LessThan(held), "the next forward released nothing");
    }
}
