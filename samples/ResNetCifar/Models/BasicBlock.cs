using GroupNormalization;
using TorchSharp;
using static TorchSharp.torch;
using GroupNorm = GroupNormalization.GroupNorm;

namespace ResNetCifar.Models;

/// <summary>
/// Two 3×3 convolutions with a residual connection; a 1×1 projection when the shape changes. With our
/// GroupNorm and fusion on (<see cref="NormFactory.Fuse"/>), norm1 + ReLU is one layer and norm2 + shortcut +
/// ReLU one call (<see cref="GroupNorm.forward(Tensor, Tensor?)"/>): the same function, with two fewer passes
/// over the activations and two fewer activation-sized tensors kept for backward.
/// </summary>
internal sealed class BasicBlock : nn.Module<Tensor, Tensor>
{
    // Fields are typed Module<Tensor, Tensor> so BatchNormConverter can swap the norms in place.
    private readonly nn.Module<Tensor, Tensor> conv1;
    private readonly nn.Module<Tensor, Tensor> norm1;
    private readonly nn.Module<Tensor, Tensor> conv2;
    private readonly nn.Module<Tensor, Tensor> norm2;
    private readonly nn.Module<Tensor, Tensor>? shortcut;

    public BasicBlock(long inChannels, long outChannels, long stride, NormFactory norms, ConvFactory convs) : base(nameof(BasicBlock))
    {
        conv1 = convs.Create(inChannels, outChannels, 3, stride: stride, padding: 1);
        norm1 = norms.Create(outChannels, then: Activation.ReLU);
        conv2 = convs.Create(outChannels, outChannels, 3, padding: 1);
        norm2 = norms.Create(outChannels, then: Activation.ReLU);
        NormFactory.ZeroGamma(norm2);
        if (stride != 1 || inChannels != outChannels)
        {
            shortcut = nn.Sequential(
                ("conv", convs.Create(inChannels, outChannels, 1, stride: stride)),
                ("norm", norms.Create(outChannels)));
        }
        RegisterComponents();
    }

    public override Tensor forward(Tensor input)
    {
        using var scope = torch.NewDisposeScope();
        var y = norm1.call(conv1.call(input));
        if (NormFactory.Fused(norm1, Activation.ReLU) is null) y = y.relu_();
        y = conv2.call(y);
        var identity = shortcut is null ? input : shortcut.call(input);
        y = NormFactory.Fused(norm2, Activation.ReLU) is { } fused
            ? fused.forward(y, identity)
            : norm2.call(y).add_(identity).relu_();
        return y.MoveToOuterDisposeScope();
    }
}
