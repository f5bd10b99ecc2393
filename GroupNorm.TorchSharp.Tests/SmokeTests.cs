using NUnit.Framework;
using TorchSharp;

namespace GroupNormalization.Tests;

public sealed class SmokeTests
{
    [Test]
    public void ModuleMatchesBuiltInOnOneBatch()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(0);
        var x = torch.randn(2, 8, 5, 5);
        using var ours = new GroupNorm(4, 8);
        var expected = torch.nn.functional.group_norm(x, 4, torch.ones(8), torch.zeros(8));
        Assert.That(ours.forward(x).allclose(expected, rtol: 1e-5, atol: 1e-6), Is.True);
    }
}
