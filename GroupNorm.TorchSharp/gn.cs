using static TorchSharp.torch;

namespace GroupNormalization;

/// <summary>
/// Factories named as TorchSharp's, for code written against <c>torch.nn</c>: <c>nn.GroupNorm(32, 128)</c>
/// becomes <c>gn.GroupNorm(32, 128)</c>, one identifier changed, every argument kept.
/// <para>
/// Why a factory and not only the constructor: a file that has <c>using TorchSharp.Modules;</c> (as most
/// TorchSharp model code does, for <c>Conv2d</c> and friends) and <c>using GroupNormalization;</c> sees two
/// types named <c>GroupNorm</c>, so <c>new GroupNorm(…)</c> there is ambiguous (CS0104) and needs an alias.
/// <c>gn</c> is a name TorchSharp does not use, so the call resolves with both usings in place; keep the
/// result in a <c>Module&lt;Tensor, Tensor&gt;</c> field (or <c>var</c>), which also lets
/// <see cref="Conversion.GroupNormConverter"/> swap layers in models built the other way.
/// </para>
/// </summary>
#pragma warning disable CS8981 // Lower-case like TorchSharp's own nn, on purpose.
public static class gn
#pragma warning restore CS8981
{
    /// <summary>
    /// Our <see cref="GroupNormalization.GroupNorm"/>, with <c>torch.nn.GroupNorm</c>'s parameters in its order,
    /// plus the fused <paramref name="activation"/>. Weight starts at 1 and bias at 0 (TorchSharp 0.107's
    /// factory leaves them uninitialised).
    /// </summary>
    /// <param name="num_groups">Number of groups to split the channels into; must divide num_channels.</param>
    /// <param name="num_channels">Number of channels C expected in the input.</param>
    /// <param name="eps">Added to the variance for numerical stability; must be ≥ 0.</param>
    /// <param name="affine">Whether to learn per-channel weight and bias.</param>
    /// <param name="device">Device for the parameters (default: TorchSharp's default device).</param>
    /// <param name="dtype">Floating dtype for the parameters (default: TorchSharp's default dtype).</param>
    /// <param name="activation">Activation fused after the normalization (default none).</param>
    /// <exception cref="System.ArgumentException">An argument is out of range; the message names it and its value.</exception>
    public static GroupNorm GroupNorm(long num_groups, long num_channels, double eps = 1e-5, bool affine = true, Device? device = null,
        ScalarType? dtype = null, Activation activation = Activation.None) =>
        new(num_groups, num_channels, eps, affine, device, dtype, activation);
}
