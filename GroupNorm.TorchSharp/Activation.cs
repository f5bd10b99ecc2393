namespace GroupNormalization;

/// <summary>
/// An element-wise activation applied to GroupNorm's output inside the same kernel: act(GroupNorm(x)).
/// <para>
/// Diffusion UNets and VAEs put SiLU after almost every GroupNorm (and some decoders GELU), ResNets put ReLU. Fused, the pair writes
/// its output once instead of writing it, reading it back and writing it again, and the backward recomputes
/// the pre-activation from x instead of keeping a second input-sized tensor for the activation's gradient.
/// </para>
/// </summary>
public enum Activation
{
    /// <summary>No activation: plain GroupNorm.</summary>
    None = 0,

    /// <summary>SiLU (swish): z·σ(z), as <c>torch.nn.functional.silu</c>.</summary>
    SiLU = 1,

    /// <summary>
    /// ReLU: max(z, 0), as <c>torch.nn.functional.relu</c>. Its gradient is PyTorch's: 0 where z ≤ 0 (at
    /// z = 0 too) and the incoming gradient elsewhere, which includes a NaN z.
    /// </summary>
    ReLU = 2,

    /// <summary>
    /// GELU, exact: z·Φ(z) = z·(1 + erf(z/√2))/2, as <c>torch.nn.functional.gelu</c> with its default
    /// <c>approximate='none'</c> (not the tanh approximation).
    /// </summary>
    GELU = 3,
}
