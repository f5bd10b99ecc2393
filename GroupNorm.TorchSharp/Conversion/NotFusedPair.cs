namespace GroupNormalization.Conversion;

/// <summary>
/// A normalization layer and an activation module that a converter saw next to each other but did not fuse,
/// and why (see <see cref="ConversionReport.NotFused"/>).
/// </summary>
/// <param name="name">Dotted path of the norm, as in <c>named_modules()</c>.</param>
/// <param name="kind">The norm's type: BatchNorm1d/2d/3d, GroupNorm (ours) or TorchSharp.Modules.GroupNorm.</param>
/// <param name="activation_name">Dotted path of the activation module.</param>
/// <param name="activation_kind">The activation module's type name (SiLU, ReLU, GELU, LeakyReLU, ...).</param>
/// <param name="reason">Why the pair was left as it is, and what to do about it where something can be done.</param>
public sealed record NotFusedPair(string name, string kind, string activation_name, string activation_kind, string reason);
