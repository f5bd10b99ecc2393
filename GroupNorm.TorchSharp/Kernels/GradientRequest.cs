namespace GroupNormalization.Kernels;

/// <summary>Which gradients a backward call must produce; the others are never computed.</summary>
internal readonly record struct GradientRequest(bool Input, bool Weight, bool Bias)
{
    public bool Any => Input || Weight || Bias;
}
