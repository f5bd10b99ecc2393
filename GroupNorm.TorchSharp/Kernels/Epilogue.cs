using static TorchSharp.torch;

namespace GroupNormalization.Kernels;

/// <summary>
/// What follows the normalization x̂ = (x − μ)·r in the same kernel: the per-channel affine γ, β (absent
/// means γ = 1, β = 0) and the activation, out = act(x̂·γ + β). Backward needs β only to rebuild the
/// pre-activation, so callers without an activation may leave it out; <see cref="ParameterType"/> is
/// therefore recorded by forward rather than read from β in backward.
/// </summary>
/// <param name="Weight">γ, or null for 1.</param>
/// <param name="Bias">β, or null for 0 (or when backward has no activation and does not need it).</param>
/// <param name="Activation">The activation applied to x̂·γ + β.</param>
/// <param name="ParameterType">
/// The dtype the gradients of γ and β come back in: the parameters' own, which is float32 for a
/// mixed-precision half input (the input's dtype when there are none).
/// </param>
internal readonly record struct Epilogue(Tensor? Weight, Tensor? Bias, Activation Activation, ScalarType ParameterType)
{
    /// <summary>The epilogue of a forward call, with its parameters' dtype.</summary>
    public static Epilogue Of(Tensor input, Tensor? weight, Tensor? bias, Activation activation) =>
        new(weight, bias, activation, weight?.dtype ?? bias?.dtype ?? input.dtype);
}
