using System;

namespace GroupNormalization.Conversion;

/// <summary>
/// How <see cref="BatchNormConverter"/> turns each BatchNorm layer into a <see cref="GroupNorm"/>.
/// <para>
/// The number of groups G for a layer with C channels must divide C. The rule:
/// when <see cref="channels_per_group"/> is set, G is the largest divisor of C that is at most
/// C / channels_per_group (so every group holds at least that many channels); otherwise G is the largest
/// divisor of C that is at most <see cref="num_groups"/>. With the default (32, as in Wu &amp; He) a
/// 64-channel layer gets 32 groups, a 48-channel layer 24 and a 16-channel layer 16.
/// </para>
/// </summary>
public sealed class BatchNormConversionOptions
{
    private long _numGroups = 32;
    private long? _channelsPerGroup;
    private double? _eps;

    /// <summary>Target number of groups; a layer gets the largest divisor of its channel count not above it. Default 32.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is below 1.</exception>
    public long num_groups
    {
        get => _numGroups;
        set
        {
            if (value < 1)
                throw new ArgumentOutOfRangeException(nameof(num_groups), value, $"num_groups must be at least 1, but got num_groups={value}.");
            _numGroups = value;
        }
    }

    /// <summary>
    /// When set, overrides <see cref="num_groups"/>: each group holds at least this many channels
    /// (G is the largest divisor of C not above C / channels_per_group, and at least 1).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is below 1.</exception>
    public long? channels_per_group
    {
        get => _channelsPerGroup;
        set
        {
            if (value is < 1)
                throw new ArgumentOutOfRangeException(nameof(channels_per_group), value, $"channels_per_group must be at least 1, but got channels_per_group={value}.");
            _channelsPerGroup = value;
        }
    }

    /// <summary>Epsilon for the new layers; null (the default) keeps each BatchNorm's own eps.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is negative or NaN.</exception>
    public double? eps
    {
        get => _eps;
        set
        {
            if (value is double v && !(v >= 0))
                throw new ArgumentOutOfRangeException(nameof(eps), value, $"eps must be >= 0, but got eps={value}.");
            _eps = value;
        }
    }

    /// <summary>Whether the new layers are affine; null (the default) follows each BatchNorm's own affine flag.</summary>
    public bool? affine { get; set; }

    /// <summary>
    /// Whether BatchNorm's learned γ and β become the GroupNorm's weight and bias (default true). When false,
    /// or when the BatchNorm has no affine parameters, the GroupNorm starts at weight 1 and bias 0.
    /// </summary>
    public bool copy_affine { get; set; } = true;

    /// <summary>
    /// Whether the replaced modules are disposed once nothing in the tree refers to them (default true): the
    /// BatchNorm layers, and with <see cref="fuse_activations"/> the normalization and activation modules folded away.
    /// </summary>
    public bool dispose_replaced { get; set; } = true;

    /// <summary>
    /// Whether a normalization layer followed directly by a SiLU, ReLU or exact GELU inside a <c>Sequential</c> becomes one
    /// <see cref="GroupNorm"/> with that <see cref="GroupNorm.activation"/> (default false). See
    /// <see cref="BatchNormConverter"/> for which layers fold and what takes the activation's place; pairs seen
    /// but not fused are listed in <see cref="ConversionReport.NotFused"/> with the reason.
    /// <para>
    /// A residual add is never folded: in TorchSharp it is arithmetic inside a block's <c>forward</c>
    /// (<c>y.add_(identity).relu_()</c>), not a module, so no module tree shows it. Write such a block with
    /// <see cref="GroupNorm.forward(TorchSharp.torch.Tensor, TorchSharp.torch.Tensor?)"/> (a GroupNorm built with
    /// <c>activation: Activation.ReLU</c>, called with the shortcut) or <see cref="Functional.group_norm"/>'s
    /// <c>residual</c>.
    /// </para>
    /// </summary>
    public bool fuse_activations { get; set; }

    /// <summary>The number of groups these options give a layer with <paramref name="num_channels"/> channels.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="num_channels"/> is below 1.</exception>
    public long choose_num_groups(long num_channels)
    {
        if (num_channels < 1)
            throw new ArgumentOutOfRangeException(nameof(num_channels), num_channels, $"num_channels must be at least 1, but got num_channels={num_channels}.");
        var cap = _channelsPerGroup is long perGroup ? num_channels / perGroup : _numGroups;
        for (var g = Math.Min(Math.Max(cap, 1), num_channels); g > 1; g--)
        {
            if (num_channels % g == 0) return g;
        }
        return 1;
    }
}
