using System.Collections.Generic;

namespace GroupNormalization.Conversion;

/// <summary>What <see cref="BatchNormConverter.Convert"/> replaced (see <see cref="ConversionReport"/>).</summary>
public sealed class BatchNormConversionReport : ConversionReport
{
    internal BatchNormConversionReport(IReadOnlyList<ConvertedLayer> layers, IReadOnlyList<NotFusedPair> notFused)
        : base(layers, notFused, [])
    {
    }
}
