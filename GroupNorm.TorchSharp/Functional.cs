using GroupNormalization.Autograd;
using static TorchSharp.torch;

namespace GroupNormalization;

/// <summary>
/// Group Normalization as a function, for code that holds its own parameters
/// (the counterpart of PyTorch's functional form; this one never calls libtorch's kernel).
/// </summary>
public static class Functional
{
    /// <summary>
    /// Normalizes <paramref name="input"/> over groups of channels:
    /// y = act((x − μ) / √(σ² + eps) · weight[c] + bias[c] + residual), with μ and the biased σ² taken per
    /// sample over each group's channels and all spatial positions.
    /// </summary>
    /// <param name="input">A floating-point tensor of shape (N, C, *), rank 2 to any.</param>
    /// <param name="num_groups">Number of groups; must divide C.</param>
    /// <param name="weight">
    /// Optional per-channel scale γ of shape (C), on the input's device, in the input's dtype; or float32 for a
    /// float16/bfloat16 input (mixed precision, as PyTorch allows on CPU): the output keeps the input's dtype.
    /// </param>
    /// <param name="bias">Optional per-channel shift β of shape (C), with the same rules as weight.</param>
    /// <param name="eps">Added to the variance for numerical stability; must be ≥ 0.</param>
    /// <param name="activation">Activation fused after the normalization (default none).</param>
    /// <param name="residual">
    /// Optional tensor of the input's shape, dtype and device (any layout), added after the affine transform
    /// and before the activation, as in a ResNet block's norm2 → += shortcut → ReLU; it receives a gradient
    /// when it requires one.
    /// </param>
    /// <returns>A tensor of the input's shape, dtype, device and memory format.</returns>
    /// <exception cref="System.ArgumentException">An argument is malformed; the message names it and its value.</exception>
    public static Tensor group_norm(Tensor input, long num_groups, Tensor? weight = null, Tensor? bias = null, double eps = 1e-5,
        Activation activation = Activation.None, Tensor? residual = null)
    {
        var shape = GroupNormArguments.Validate(input, num_groups, weight, bias, eps, activation: activation, residual: residual);
        return GroupNormFunction.Apply(input, weight, bias, residual, shape, eps, activation);
    }
}
