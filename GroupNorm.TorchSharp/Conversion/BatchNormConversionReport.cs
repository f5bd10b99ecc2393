using System.Collections.Generic;

namespace GroupNormalization.Conversion;

/// <summary>What <see cref="BatchNormConverter.Convert"/> replaced.</summary>
public sealed class BatchNormConversionReport
{
    internal BatchNormConversionReport(IReadOnlyList<ConvertedLayer> layers) => Layers = layers;

    /// <summary>Every replaced layer, in the order the module tree was walked.</summary>
    public IReadOnlyList<ConvertedLayer> Layers { get; }

    /// <summary>How many BatchNorm modules were replaced (a module shared by several parents counts once).</summary>
    public int Count => Layers.Count;
}
