using static TorchSharp.torch;

namespace GroupNormalization.Conversion;

/// <summary>
/// What one converter swaps and how, for <see cref="ConversionEngine"/>, which walks the tree, plans every
/// place, folds activations and writes the report the same way for every rule.
/// </summary>
internal abstract class ConversionRule
{
    /// <summary>Whether a norm followed by a SiLU, ReLU or exact GELU in a plain <c>Sequential</c> becomes one layer.</summary>
    public abstract bool FuseActivations { get; }

    /// <summary>Whether replaced modules are disposed once nothing in the tree refers to them.</summary>
    public abstract bool DisposeReplaced { get; }

    /// <summary>
    /// Whether a layer some of whose places cannot hold a GroupNorm is an error (an
    /// <see cref="System.InvalidOperationException"/> before anything changes) rather than a report entry.
    /// </summary>
    public abstract bool ThrowsWhenBlocked { get; }

    /// <summary>Whether <paramref name="module"/> is one of the layers this converter swaps.</summary>
    public abstract bool IsTarget(nn.Module module);

    /// <summary>The replacement of <paramref name="target"/>, with <paramref name="activation"/> fused, or why there is none.</summary>
    public abstract Replacements.Built Create(nn.Module target, Activation activation);
}
