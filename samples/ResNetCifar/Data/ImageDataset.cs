using System;
using TorchSharp;
using static TorchSharp.torch;

namespace ResNetCifar.Data;

/// <summary>A labelled image set held in memory as normalized float32 (N, C, H, W) and int64 labels.</summary>
internal sealed class ImageDataset : IDisposable
{
    public ImageDataset(string name, Tensor images, Tensor labels, bool augment)
    {
        Name = name;
        Images = images.DetachFromDisposeScope();
        Labels = labels.DetachFromDisposeScope();
        Augment = augment;
    }

    public string Name { get; }
    public Tensor Images { get; }
    public Tensor Labels { get; }

    /// <summary>Whether training batches get random crops and flips (natural images; not digits or clothes).</summary>
    public bool Augment { get; }

    public long Count => Labels.shape[0];
    public long Channels => Images.shape[1];

    /// <summary>Normalizes raw bytes per channel with the given statistics (those of the training split).</summary>
    public static ImageDataset FromRaw(string name, RawImages raw, double[] mean, double[] std, bool augment)
    {
        using var scope = torch.NewDisposeScope();
        var images = torch.tensor(raw.Pixels, new long[] { raw.Count, raw.Channels, raw.Height, raw.Width }, ScalarType.Byte)
            .to(ScalarType.Float32).div_(255.0);
        var m = torch.tensor(mean, ScalarType.Float32).view(1, -1, 1, 1);
        var s = torch.tensor(std, ScalarType.Float32).view(1, -1, 1, 1);
        images = images.sub_(m).div_(s);
        var labels = torch.tensor(raw.Labels, ScalarType.Byte).to(ScalarType.Int64);
        return new ImageDataset(name, images.MoveToOuterDisposeScope(), labels.MoveToOuterDisposeScope(), augment);
    }

    /// <summary>Per-channel mean and standard deviation of the pixels, scaled to [0, 1].</summary>
    public static (double[] Mean, double[] Std) ChannelStatistics(RawImages raw)
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.tensor(raw.Pixels, new long[] { raw.Count, raw.Channels, raw.Height * raw.Width }, ScalarType.Byte)
            .to(ScalarType.Float64).div_(255.0).transpose(0, 1).reshape(raw.Channels, -1);
        var mean = x.mean(new long[] { 1 }).data<double>().ToArray();
        var std = x.std(1).data<double>().ToArray();
        return (mean, std);
    }

    /// <summary>The first <paramref name="count"/> images of a fixed random permutation (deterministic for a seed).</summary>
    public ImageDataset Take(long count, long seed)
    {
        if (count >= Count) return new ImageDataset(Name, Images.alias(), Labels.alias(), Augment);
        using var scope = torch.NewDisposeScope();
        var generator = new torch.Generator((ulong)seed);
        var index = torch.randperm(Count, generator: generator).narrow(0, 0, count);
        return new ImageDataset(Name, Images.index_select(0, index).MoveToOuterDisposeScope(), Labels.index_select(0, index).MoveToOuterDisposeScope(), Augment);
    }

    /// <summary>
    /// Two disjoint subsets from one fixed random permutation (deterministic for a seed): the first
    /// <paramref name="firstCount"/> images, then the next <paramref name="secondCount"/>. A validation split
    /// carved from the training set this way never shares an image with the training subset.
    /// </summary>
    public (ImageDataset First, ImageDataset Second) Split(long firstCount, long secondCount, long seed)
    {
        if (firstCount < 1 || secondCount < 0 || firstCount + secondCount > Count)
            throw new ArgumentException($"Cannot split {Count} images into {firstCount} and {secondCount}.");
        using var scope = torch.NewDisposeScope();
        var generator = new torch.Generator((ulong)seed);
        var order = torch.randperm(Count, generator: generator);
        ImageDataset Part(long start, long count)
        {
            var index = order.narrow(0, start, count);
            return new ImageDataset(Name, Images.index_select(0, index).MoveToOuterDisposeScope(), Labels.index_select(0, index).MoveToOuterDisposeScope(), Augment);
        }
        return (Part(0, firstCount), Part(firstCount, secondCount));
    }

    public void Dispose()
    {
        Images.Dispose();
        Labels.Dispose();
    }
}
