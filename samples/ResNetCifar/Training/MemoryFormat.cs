using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ResNetCifar.Training;

/// <summary>
/// PyTorch's channels_last for a batch of images and for a model's convolution weights. TorchSharp has no
/// memory-format conversion, so it is a copy into a tensor with channels-innermost strides: the same
/// values and shape. libtorch's CPU convolution keeps the format of its input, and the norms and
/// activations after it keep theirs, so a channels_last batch makes the whole network run in it; the
/// weights are converted as well, which the convolution's own kernels prefer.
/// </summary>
internal static class MemoryFormat
{
    /// <summary>Gives every Conv2d weight of <paramref name="model"/> the channels_last format (before the optimizer is built).</summary>
    public static void ConvertWeights(nn.Module model, bool channelsLast)
    {
        if (!channelsLast) return;
        using var noGrad = torch.no_grad();
        foreach (var module in model.modules())
        {
            if (module is not Conv2d conv) continue;
            var weight = conv.weight;
            conv.weight = new Parameter(Apply(weight.detach(), channelsLast: true), weight.requires_grad);
        }
    }

    /// <summary>A channels_last copy of a 4-d <paramref name="images"/>; itself when not asked or not 4-d.</summary>
    public static Tensor Apply(Tensor images, bool channelsLast)
    {
        if (!channelsLast || images.ndim != 4) return images;
        // Strides set explicitly: a permute, copy and permute back leaves a one-channel tensor row-major,
        // since libtorch sees nothing to move.
        long n = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
        var result = torch.empty_strided(new[] { n, c, h, w }, new[] { h * w * c, 1, w * c, c }, images.dtype, images.device);
        using (torch.no_grad()) result.copy_(images);
        return result;
    }
}
