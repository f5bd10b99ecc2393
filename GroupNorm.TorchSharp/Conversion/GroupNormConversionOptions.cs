namespace GroupNormalization.Conversion;

/// <summary>How <see cref="GroupNormConverter"/> swaps TorchSharp's GroupNorm layers for ours.</summary>
public sealed class GroupNormConversionOptions
{
    /// <summary>
    /// Whether a GroupNorm followed directly by a SiLU, ReLU or exact GELU module inside a plain <c>Sequential</c>
    /// becomes one <see cref="GroupNorm"/> with that <see cref="GroupNorm.activation"/> (default false). The
    /// activation's slot then holds an <c>nn.Identity</c>, so indices and state-dict keys do not change. Pairs
    /// that are seen but not fused are listed in <see cref="ConversionReport.NotFused"/> with the reason.
    /// </summary>
    public bool fuse_activations { get; set; }

    /// <summary>
    /// Whether the replaced modules are disposed once nothing in the tree refers to them (default true): the
    /// TorchSharp GroupNorm layers, and with <see cref="fuse_activations"/> the activation modules folded away.
    /// </summary>
    public bool dispose_replaced { get; set; } = true;
}
