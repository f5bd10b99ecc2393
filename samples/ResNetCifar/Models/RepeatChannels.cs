using static TorchSharp.torch;

namespace ResNetCifar.Models;

/// <summary>Repeats a 1-channel image to 3 channels so torchvision's RGB networks accept Fashion-MNIST.</summary>
internal sealed class RepeatChannels() : nn.Module<Tensor, Tensor>(nameof(RepeatChannels))
{
    public override Tensor forward(Tensor input) => input.shape[1] == 1 ? input.expand(-1, 3, -1, -1) : input.alias();
}
