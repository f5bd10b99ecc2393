using System.Linq;
using GroupNormalization;
using NUnit.Framework;
using ResNetCifar.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ResNetCifar.Tests.Models;

/// <summary>
/// The CIFAR ResNet with fused blocks (GroupNorm+ReLU, GroupNorm+add+ReLU) is the same network as the plain
/// drop-in: the same state-dict keys and values after the same seed, the same output, and the same gradient
/// of every parameter, in NCHW and channels_last.
/// </summary>
public sealed class FusedBlockTests
{
    [Test]
    public void FusedBlocksComputeThePlainNetwork([Values] bool channelsLast)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(7);
        using var fused = new CifarResNet(8, 3, 10, new NormFactory(NormKind.Gn, groups: 4, fuse: true));
        torch.manual_seed(7);
        using var plain = new CifarResNet(8, 3, 10, new NormFactory(NormKind.Gn, groups: 4, fuse: false));

        var fusedNorms = fused.modules().OfType<GroupNorm>().ToList();
        // The stem's norm and both of each block's fuse ReLU; the shortcut's projection norm does not.
        Assert.That(fusedNorms.Count(n => n.activation == Activation.ReLU), Is.EqualTo(1 + 2 * 3), "norms with ReLU fused");
        Assert.That(plain.modules().OfType<GroupNorm>().All(n => n.activation == Activation.None), Is.True, "the plain network fuses nothing");
        Assert.That(fused.state_dict().Keys, Is.EqualTo(plain.state_dict().Keys), "state-dict keys");

        // Random γ and β, so that the zero-initialised norm2 of each block does not hide the fused add.
        var generator = new Generator(11);
        TwinNorms.Randomize(fusedNorms.Zip(plain.modules().OfType<GroupNorm>()), generator);
        var x = torch.randn(new long[] { 4, 3, 16, 16 }, generator: generator);
        x = ResNetCifar.Training.MemoryFormat.Apply(x, channelsLast);
        ResNetCifar.Training.MemoryFormat.ConvertWeights(fused, channelsLast);
        ResNetCifar.Training.MemoryFormat.ConvertWeights(plain, channelsLast);

        var yFused = fused.call(x);
        var yPlain = plain.call(x);
        yFused.square().sum().backward();
        yPlain.square().sum().backward();

        Assert.Multiple(() =>
        {
            Assert.That(RelativeError(yFused, yPlain), Is.LessThan(1e-5), "output");
            foreach (var ((name, pf), (_, pp)) in fused.named_parameters().Zip(plain.named_parameters()))
                Assert.That(RelativeError(pf.grad!, pp.grad!), Is.LessThan(1e-4), $"gradient of {name}");
        });
    }

    private static double RelativeError(Tensor actual, Tensor expected) =>
        (actual - expected).abs().max().item<float>() / expected.abs().max().item<float>();
}
