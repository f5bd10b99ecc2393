using TorchSharp;
using static TorchSharp.torch;

namespace ResNetCifar.Data;

/// <summary>The standard CIFAR augmentation: random 32×32 crop of the 4-pixel zero-padded image, then a random horizontal flip.</summary>
internal static class Augmentation
{
    private const int Pad = 4;

    public static Tensor CropAndFlip(Tensor batch, torch.Generator generator)
    {
        long n = batch.shape[0], h = batch.shape[2], w = batch.shape[3];
        var padded = torch.nn.functional.pad(batch, new long[] { Pad, Pad, Pad, Pad });
        var offsets = torch.randint(0, 2 * Pad + 1, new long[] { n, 2 }, generator: generator).data<long>().ToArray();
        var crops = new Tensor[n];
        for (var i = 0; i < n; i++)
        {
            crops[i] = padded[i].narrow(1, offsets[2 * i], h).narrow(2, offsets[2 * i + 1], w);
        }
        var cropped = torch.stack(crops, dim: 0);
        var flip = torch.rand(new long[] { n, 1, 1, 1 }, generator: generator).lt(0.5);
        return torch.where(flip, cropped.flip(3), cropped);
    }
}
