using GroupNormalization;
using static TorchSharp.torch;

namespace ResNetCifar.Models;

/// <summary>
/// Builds the network's convolutions: TorchSharp's Conv2d, or GroupNorm.TorchSharp's weight-standardized
/// one (Qiao et al. 2019), which BiT's ResNets pair with GroupNorm.
/// </summary>
internal sealed class ConvFactory(bool weightStandardized = false)
{
    public bool WeightStandardized { get; } = weightStandardized;

    public nn.Module<Tensor, Tensor> Create(long inChannels, long outChannels, long kernelSize, long stride = 1, long padding = 0) =>
        WeightStandardized
            ? new WeightStandardizedConv2d(inChannels, outChannels, kernelSize, stride: stride, padding: padding, bias: false)
            : nn.Conv2d(inChannels, outChannels, kernelSize, stride: stride, padding: padding, bias: false);
}
