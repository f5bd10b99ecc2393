namespace GroupNormalization.Conversion;

/// <summary>One BatchNorm layer that <see cref="BatchNormConverter"/> replaced.</summary>
/// <param name="name">Dotted path of the layer in the module tree, as in <c>named_modules()</c> (e.g. <c>layer1.0.bn1</c>).</param>
/// <param name="kind">The replaced module's type name (BatchNorm1d, BatchNorm2d or BatchNorm3d).</param>
/// <param name="num_channels">Channel count C of the layer.</param>
/// <param name="num_groups">Number of groups G chosen for the new <see cref="GroupNorm"/>.</param>
public sealed record ConvertedLayer(string name, string kind, long num_channels, long num_groups);
