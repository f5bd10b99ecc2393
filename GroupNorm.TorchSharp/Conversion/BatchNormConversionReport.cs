using System.Collections.Generic;
using System.Linq;

namespace GroupNormalization.Conversion;

/// <summary>What <see cref="BatchNormConverter.Convert"/> replaced.</summary>
public sealed class BatchNormConversionReport
{
    internal BatchNormConversionReport(IReadOnlyList<ConvertedLayer> layers)
    {
        Layers = layers;
        Folded = layers.Where(l => l.activation != Activation.None).ToList();
    }

    /// <summary>Every replaced layer, in the order the module tree was walked.</summary>
    public IReadOnlyList<ConvertedLayer> Layers { get; }

    /// <summary>
    /// How many modules were replaced (a module shared by several parents counts once): the BatchNorm layers,
    /// and the GroupNorm layers that absorbed an activation.
    /// </summary>
    public int Count => Layers.Count;

    /// <summary>The layers that absorbed the activation after them (<see cref="BatchNormConversionOptions.fuse_activations"/>).</summary>
    public IReadOnlyList<ConvertedLayer> Folded { get; }
}
