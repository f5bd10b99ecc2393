using static TorchSharp.torch;

namespace ResNetCifar.Training;

/// <summary>
/// PyTorch's channels_last for a batch of images. TorchSharp has no memory-format conversion, so it is a
/// permute to (N, H, W, C), a dense copy, and a permute back: the same values and shape, channels innermost.
/// libtorch's CPU convolution keeps the format of its input, so converting the batch is enough for every
/// convolution, norm and activation after it to run in channels_last.
/// </summary>
internal static class MemoryFormat
{
    public static Tensor Apply(Tensor images, bool channelsLast)
    {
        if (!channelsLast || images.ndim != 4) return images;
        using var nhwc = images.permute(0, 2, 3, 1).contiguous();
        return nhwc.permute(0, 3, 1, 2);
    }
}
