using System.Collections.Generic;
using System.Linq;

namespace GroupNormalization.Benchmarks;

/// <summary>One benchmark input shape (N, C, H, W) and its group count.</summary>
public sealed record BenchCase(long N, long C, long H, long W, long G)
{
    public long[] Shape => new[] { N, C, H, W };

    public long Numel => N * C * H * W;

    /// <summary>The shapes: common vision and diffusion-model layers, plus ResNet-20 on CIFAR.</summary>
    public static IReadOnlyList<BenchCase> Standard { get; } = new[]
    {
        new BenchCase(32, 64, 32, 32, 32),
        new BenchCase(128, 64, 32, 32, 32),
        new BenchCase(8, 256, 56, 56, 32),
        new BenchCase(2, 320, 64, 64, 32),
        new BenchCase(2, 1280, 8, 8, 32),
        new BenchCase(1, 32, 256, 256, 32),
        new BenchCase(64, 512, 7, 7, 32),
        new BenchCase(16, 16, 32, 32, 8),
    };

    /// <summary>The sample's ResNet-20 at batch 32 with its 8 groups: one shape per stage (16, 32 and 64 channels).</summary>
    public static IReadOnlyList<BenchCase> ResNet20 { get; } = new[]
    {
        new BenchCase(32, 16, 32, 32, 8),
        new BenchCase(32, 32, 16, 16, 8),
        new BenchCase(32, 64, 8, 8, 8),
    };

    /// <summary>
    /// GroupNorm + residual add + ReLU: the norm2 of a ResNet basic block, at ResNet-20's three stages (batch 32,
    /// 8 groups) and a ResNet-50-sized (8, 256, 56, 56)/32.
    /// </summary>
    public static IReadOnlyList<BenchCase> Residual { get; } = ResNet20.Append(new BenchCase(8, 256, 56, 56, 32)).ToArray();

    public static IEnumerable<BenchCase> Quick => Standard.Where(c => c.Numel <= 300_000).Take(1);

    /// <summary>
    /// Stable Diffusion's UNet GroupNorms at batch 2 (classifier-free guidance doubles the batch) on its three
    /// widest stages, and the VAE decoder's (1, 512, 128, 128), the largest, at 32 MiB in float32.
    /// </summary>
    public static IReadOnlyList<BenchCase> StableDiffusion { get; } = new[]
    {
        new BenchCase(2, 320, 64, 64, 32),
        new BenchCase(2, 640, 32, 32, 32),
        new BenchCase(2, 1280, 16, 16, 32),
        new BenchCase(1, 512, 128, 128, 32),
    };

    /// <summary>GroupNorm followed by SiLU or ReLU: where the fused activation is used, then the shapes.</summary>
    public static IReadOnlyList<BenchCase> Activation { get; } = StableDiffusion.Concat(Standard).Distinct().ToArray();

    /// <summary>
    /// Half precision: the diffusion shapes (where float16 and bfloat16 are run) and a few of the shapes,
    /// small and large, many groups and few.
    /// </summary>
    public static IReadOnlyList<BenchCase> Half { get; } = StableDiffusion.Concat(new[]
    {
        new BenchCase(32, 64, 32, 32, 32),
        new BenchCase(2, 1280, 8, 8, 32),
        new BenchCase(64, 512, 7, 7, 32),
        new BenchCase(16, 16, 32, 32, 8),
    }).ToArray();

    /// <summary>
    /// The diffusion suite's residual blocks (channels in = out, 32 groups): Stable Diffusion's VAE at its three
    /// widest resolutions (batch 1) and its UNet's three stages at batch 2 (classifier-free guidance).
    /// </summary>
    public static IReadOnlyList<BenchCase> Diffusion { get; } = new[]
    {
        new BenchCase(1, 128, 256, 256, 32),
        new BenchCase(1, 256, 128, 128, 32),
        new BenchCase(1, 512, 64, 64, 32),
        new BenchCase(2, 320, 64, 64, 32),
        new BenchCase(2, 640, 32, 32, 32),
        new BenchCase(2, 1280, 16, 16, 32),
    };

    /// <summary>The diffusion suite's --quick shape: 32 groups of 2 channels, small enough for a smoke test.</summary>
    public static IReadOnlyList<BenchCase> DiffusionQuick { get; } = new[] { new BenchCase(1, 64, 16, 16, 32) };

    // BenchmarkDotNet prints parameters with ToString: keep it short and stable for the report.
    public override string ToString() => $"{N}x{C}x{H}x{W}/G{G}";
}

/// <summary>Memory layouts under test.</summary>
public enum Layout
{
    Nchw,
    ChannelsLast,
}
