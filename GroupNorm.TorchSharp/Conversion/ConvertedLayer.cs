namespace GroupNormalization.Conversion;

/// <summary>One layer that a converter (<see cref="BatchNormConverter"/>, <see cref="GroupNormConverter"/>) replaced with a <see cref="GroupNorm"/>.</summary>
/// <param name="name">Dotted path of the layer in the module tree, as in <c>named_modules()</c> (e.g. <c>layer1.0.bn1</c>).</param>
/// <param name="kind">
/// The replaced module's type name: BatchNorm1d, BatchNorm2d or BatchNorm3d, or TorchSharp.Modules.GroupNorm
/// (TorchSharp's, named in full to tell it from ours); with <c>fuse_activations</c> also GroupNorm (ours).
/// </param>
/// <param name="num_channels">Channel count C of the layer.</param>
/// <param name="num_groups">Number of groups G of the new <see cref="GroupNorm"/>.</param>
/// <param name="activation">The activation folded into the new layer, or <see cref="Activation.None"/>.</param>
/// <param name="activation_name">Dotted path of the folded activation's slot, which now holds an Identity; null when nothing was folded.</param>
public sealed record ConvertedLayer(string name, string kind, long num_channels, long num_groups,
    Activation activation = Activation.None, string? activation_name = null);
