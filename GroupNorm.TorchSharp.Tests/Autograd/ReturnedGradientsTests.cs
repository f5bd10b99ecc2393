using System.Linq;
using GroupNormalization.Autograd;
using NUnit.Framework;
using TorchSharp;

namespace GroupNormalization.Tests.Autograd;

/// <summary>
/// The gradients our backward hands to libtorch must not outlive their use: TorchSharp never releases the
/// handles a custom backward returns, so if they stayed in the caller's dispose scope every layer's dx
/// would stay allocated until the training step ends (the built-in frees it as soon as the layer below has
/// used it). Everything here is counted on the test's own thread (its dispose scope, the thread's held
/// list), never with the process-wide tensor count, which other threads and the finalizer also move.
/// </summary>
public sealed class ReturnedGradientsTests
{
    /// <summary>
    /// One backward through a chain of <paramref name="layers"/> GroupNorms: how many tensors it left in the
    /// caller's dispose scope beyond the gradients autograd.grad returns, and how many our library holds.
    /// </summary>
    private static (long InScope, int Held) LeftByBackward(int layers)
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(new long[] { 2, 8, 16, 16 }).requires_grad_();
        var weights = Enumerable.Range(0, layers).Select(_ => (torch.rand(8) + 0.5).requires_grad_()).ToArray();
        var h = x;
        foreach (var w in weights) h = Functional.group_norm(h, 4, w, null);
        var loss = h.square().sum();
        long before = scope.DisposablesCount;
        var grads = torch.autograd.grad(new[] { loss }, weights.Prepend(x).ToArray());
        return (scope.DisposablesCount - before - grads.Count, ReturnedGradients.Held.Count);
    }

    [Test]
    public void BackwardThroughManyLayersHoldsNoMoreThanThroughFew()
    {
        var few = LeftByBackward(2);
        var many = LeftByBackward(12);
        TestContext.Out.WriteLine($"left in the caller's scope / held: 2 layers {few.InScope}/{few.Held}, 12 layers {many.InScope}/{many.Held}");
        Assert.Multiple(() =>
        {
            Assert.That(many.InScope, Is.EqualTo(few.InScope), "every layer's gradients stayed in the caller's scope");
            Assert.That(many.InScope, Is.Zero, "gradients left in the caller's scope");
            Assert.That(many.Held, Is.InRange(1, 3), "one call's dx and dweight held, no more");
        });
    }

    /// <summary>The handles held are released (disposed, not just forgotten) by the next GroupNorm call on the thread.</summary>
    [Test]
    public void TheNextCallReleasesTheLastGradients([Values] bool nextIsBackward)
    {
        LeftByBackward(2);
        var held = ReturnedGradients.Held.ToList();
        Assert.That(held, Is.Not.Empty, "backward held nothing");
        using (var scope = torch.NewDisposeScope())
        {
            if (nextIsBackward)
                LeftByBackward(1);
            else
                using (torch.no_grad())
                    Functional.group_norm(torch.randn(2, 8, 4, 4), 4);
        }
        Assert.That(held.Select(t => t.IsInvalid), Is.All.True, "a gradient of the previous backward is still alive");
    }
}
