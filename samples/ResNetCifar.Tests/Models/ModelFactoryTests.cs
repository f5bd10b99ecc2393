using System.Linq;
using GroupNormalization;
using NUnit.Framework;
using ResNetCifar.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ResNetCifar.Tests.Models;

public sealed class ModelFactoryTests
{
    /// <summary>
    /// torchvision's ResNet-18 built with our GroupNorm through norm_layer, and the BatchNorm one converted,
    /// are the same network: the same parameters and buffers under the same keys after the same seed (each
    /// block's second norm with γ = 0, torchvision's zero_init_residual), and the same output once every norm
    /// has its own random γ and β. With γ = 0 the blocks are identities, so 16 of the 20 norms (both in each
    /// of the 8 blocks) could not show in the output; with random values each one does.
    /// </summary>
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
        var builtNorms = built.named_modules().Where(m => m.module is GroupNorm).ToList();
        var convertedNorms = converted.named_modules().Where(m => m.module is GroupNorm).ToList();
        Assert.That(convertedNorms, Has.Count.EqualTo(20));
        Assert.That(convertedNorms.Select(m => m.name), Is.EqualTo(builtNorms.Select(m => m.name)), "norm layers by name");

        var builtState = built.state_dict();
        var convertedState = converted.state_dict();
        Assert.That(convertedState.Keys, Is.EquivalentTo(builtState.Keys), "state-dict keys");
        Assert.Multiple(() =>
        {
            foreach (var (key, value) in builtState)
                Assert.That(Same(value, convertedState[key]), Is.True, $"{key}: the same initial values");
        });

        var generator = new Generator(5);
        TwinNorms.Randomize(builtNorms.Zip(convertedNorms).Select(p => ((GroupNorm)p.First.module, (GroupNorm)p.Second.module)), generator);
        var x = torch.randn(new long[] { 2, 1, 32, 32 }, generator: generator);
        using var noGrad = torch.no_grad();
        var expected = built.call(x);
        // The same modules in the same order on the same values: the same float32 operations, so equal.
        Assert.That(Same(converted.call(x), expected), Is.True, "outputs with every norm's γ and β random");

        // Each norm shows: moving one norm's β moves the output (the residual-zeroed ones included).
        Assert.Multiple(() =>
        {
            foreach (var (name, module) in convertedNorms)
            {
                var bias = ((GroupNorm)module).bias!;
                bias.add_(1);
                Assert.That(Same(converted.call(x), expected), Is.False, $"{name} does not reach the output");
                bias.sub_(1);
            }
        });
    }

    /// <summary>Same shape and bit for bit the same values.</summary>
    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    [Test]
    public void ConvertedResNet18NeedsOurGroupNorm() =>
        Assert.That(() => ModelFactory.Create(ModelFactory.ResNet18ConvertedName, 20, 3, 10, new NormFactory(NormKind.Bn), _ => { }),
            Throws.ArgumentException);
}
