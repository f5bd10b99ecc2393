using System.Linq;
using GroupNormalization;
using NUnit.Framework;
using ResNetCifar.Models;
using TorchSharp;

namespace ResNetCifar.Tests.Models;

public sealed class ModelFactoryTests
{
    [Test]
    public void ResNet18WithNormLayerMatchesConvertedResNet18()
    {
        using var scope = torch.NewDisposeScope();
        var norms = new NormFactory(NormKind.Gn, groups: 8);
        torch.manual_seed(3);
        using var built = ModelFactory.Create(ModelFactory.ResNet18Name, 20, 1, 10, norms, _ => { });
        torch.manual_seed(3);
        using var converted = ModelFactory.Create(ModelFactory.ResNet18ConvertedName, 20, 1, 10, norms, _ => { });

        Assert.That(converted.modules().OfType<TorchSharp.Modules.BatchNorm>(), Is.Empty);
        Assert.That(converted.modules().OfType<GroupNorm>().Count(), Is.EqualTo(20));
        // Same seed, same initialization order, zeroed residual γ in both: the two routes give the same network.
        var x = torch.randn(2, 1, 32, 32);
        Assert.That(converted.call(x).allclose(built.call(x), rtol: 1e-4, atol: 1e-5), Is.True);
    }

    [Test]
    public void ConvertedResNet18NeedsOurGroupNorm() =>
        Assert.That(() => ModelFactory.Create(ModelFactory.ResNet18ConvertedName, 20, 3, 10, new NormFactory(NormKind.Bn), _ => { }),
            Throws.ArgumentException);
}
