namespace GroupNormalization.Conversion;

/// <summary>A layer that <see cref="GroupNormConverter"/> left as it was, and why (see <see cref="ConversionReport.NotSwapped"/>).</summary>
/// <param name="name">Dotted path of the layer, as in <c>named_modules()</c> (its first place when it is held in several).</param>
/// <param name="kind">The layer's type, e.g. TorchSharp.Modules.GroupNorm.</param>
/// <param name="reason">Why it could not be swapped.</param>
/// <param name="field">
/// The places whose declared type cannot hold our GroupNorm, as <c>Owner.field</c> (an auto-property by its
/// name), separated by commas; null when the reason is not a field.
/// </param>
/// <param name="source_change">The change in the model's source that lets the converter swap it.</param>
public sealed record NotSwappedLayer(string name, string kind, string reason, string? field, string source_change);
