using static TorchSharp.torch;

namespace GroupNormalization.Kernels;

/// <summary>
/// What follows the normalization x̂ = (x − μ)·r in the same kernel: the per-channel affine γ, β (absent
/// means γ = 1, β = 0) and the activation, out = act(x̂·γ + β). Backward needs β only to rebuild the
/// pre-activation, so callers without an activation may leave it out.
/// </summary>
internal readonly record struct Epilogue(Tensor? Weight, Tensor? Bias, Activation Activation)
{
    /// <summary>The dtype gradients of γ and β come back in: the parameters' own, which is float32 for a mixed-precision half input.</summary>
    public ScalarType ParameterType(ScalarType input) => Weight?.dtype ?? Bias?.dtype ?? input;
}
