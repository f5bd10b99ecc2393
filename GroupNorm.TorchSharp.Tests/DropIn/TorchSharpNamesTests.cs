using System.Linq;
using GroupNormalization.Tests.Support;
using MyModels;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.DropIn;

/// <summary>
/// <c>gn.GroupNorm</c>, TorchSharp's factory name with TorchSharp's parameters: the README's example (a file
/// with <c>using TorchSharp.Modules;</c> and <c>using GroupNormalization;</c>, no alias) compiles, because it is
/// <see cref="VaeResnetBlock"/>, and computes what the TorchSharp original computes.
/// </summary>
[TestFixture]
public sealed class TorchSharpNamesTests
{
    [Test]
    public void ReadmeShowsTheCompiledBlock() =>
        DocumentSnippets.AssertShown("README.md", "GroupNorm.TorchSharp.Tests/DropIn/VaeResnetBlock.cs", "torchsharp-names");

    [Test]
    public void FactoryTakesTorchSharpsArguments()
    {
        using var norm = gn.GroupNorm(num_groups: 4, num_channels: 8, eps: 1e-3, affine: false, device: torch.CPU, dtype: ScalarType.Float64,
            activation: Activation.GELU);
        Assert.Multiple(() =>
        {
            Assert.That(norm, Is.InstanceOf<GroupNorm>());
            Assert.That((norm.num_groups, norm.num_channels, norm.eps, norm.affine, norm.activation), Is.EqualTo((4L, 8L, 1e-3, false, Activation.GELU)));
            Assert.That(norm.parameters(), Is.Empty);
        });
        Assert.Throws(Is.InstanceOf<System.ArgumentException>().And.Property("ParamName").EqualTo("num_channels"), () => gn.GroupNorm(4, 6));
    }

    /// <summary>The block against the same computation with TorchSharp's own group_norm and silu, weights shared.</summary>
    [Test]
    public void BlockComputesTheTorchSharpOriginal()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(20);
        using var block = new VaeResnetBlock(64);
        var p = block.named_parameters().ToDictionary(kv => kv.name, kv => kv.parameter);
        using (torch.no_grad())
        {
            foreach (var norm in new[] { "norm1", "norm2" })
            {
                p[norm + ".weight"].uniform_(0.5, 1.5);
                p[norm + ".bias"].uniform_(-0.5, 0.5);
            }
        }
        var x = torch.randn(2, 64, 8, 8);
        Tensor Original(Tensor h, string norm) =>
            torch.nn.functional.silu(torch.nn.functional.group_norm(h, 32, p[norm + ".weight"], p[norm + ".bias"], 1e-6));
        Tensor Conv(Tensor h, string conv) => torch.nn.functional.conv2d(h, p[conv + ".weight"], p[conv + ".bias"], padding: new long[] { 1, 1 });
        using var noGrad = torch.no_grad();
        var expected = x + Conv(Original(Conv(Original(x, "norm1"), "conv1"), "norm2"), "conv2");
        var actual = block.call(x);
        Assert.That((actual - expected).abs().max().item<float>(), Is.LessThan(1e-5f));
    }
}
