using System;
using System.Linq;
using ResNetCifar.Data;
using ResNetCifar.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ResNetCifar.Training;

/// <summary>
/// Precise BN (Wu &amp; Johnson 2021, "Rethinking Batch in BatchNorm"): after training, BatchNorm's running
/// statistics, an exponential average over the last steps' slice statistics taken while the weights were
/// still moving, are replaced by the population statistics of the final network's inputs over a set of
/// training images. Test accuracy with them tells how much of BatchNorm's loss at small slices is the
/// train/test mismatch of its statistics, rather than the noise it trained with.
/// </summary>
internal static class PreciseBatchNorm
{
    private const int BatchSize = 100;

    /// <summary>Re-estimates every <see cref="GhostBatchNorm2d"/> of <paramref name="model"/>; false when it has none.</summary>
    public static bool Recalibrate(nn.Module<Tensor, Tensor> model, ImageDataset images, long count, Device device)
    {
        var norms = model.modules().OfType<GhostBatchNorm2d>().ToList();
        if (norms.Count == 0) return false;
        count = Math.Min(count, images.Count);
        foreach (var norm in norms) norm.BeginRecalibration();
        try
        {
            model.train();
            using var noGrad = torch.no_grad();
            for (long start = 0; start < count; start += BatchSize)
            {
                using var scope = torch.NewDisposeScope();
                var n = Math.Min(BatchSize, count - start);
                model.call(images.Images.narrow(0, start, n).to(device));
            }
        }
        finally
        {
            foreach (var norm in norms) norm.EndRecalibration();
        }
        return true;
    }
}
