using System;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Kernels;

/// <summary>
/// GroupNorm's formulas (<see cref="Cpu.GroupNormMath"/>) as TorchSharp tensor operations, in one place for
/// the two paths built from them: <see cref="DeviceGenericKernel"/> (forward, and backward from the saved
/// μ and r) and <c>Autograd.DifferentiableBackward</c> (backward recorded for a second derivative, μ and r
/// rebuilt from x). Everything here is out of place, or in place only on a fresh result no recorded
/// operation has saved, so the same code serves both. Grouped tensors are (N, G, D, S), per-group ones
/// (N, G, 1, 1) and per-channel ones (N, G, D, 1), in the arithmetic type.
/// </summary>
internal static class TensorFormulas
{
    private static readonly long[] GroupDims = { 2, 3 };

    /// <summary>μ and r = 1/√(σ² + ε) of each (n, g), with the biased σ², from x grouped as (N, G, D, S).</summary>
    public static (Tensor Mean, Tensor Rstd) Moments(Tensor grouped, double eps)
    {
        var (variance, mean) = grouped.var_mean(GroupDims, unbiased: false, keepdim: true);
        return (mean, (variance + eps).rsqrt());
    }

    /// <summary>a = r·γ[c], the output's per-channel scale and dz's coefficient in dx, as (N, G, D, 1).</summary>
    public static Tensor Scale(Tensor rstd, Tensor? gamma, GroupNormShape s) =>
        gamma is null ? rstd.expand(s.N, s.G, s.D, 1) : rstd * gamma;

    /// <summary>γ or β as (1, G, D, 1) in the arithmetic type, to broadcast against grouped tensors.</summary>
    public static Tensor? PerChannel(Tensor? parameter, GroupNormShape s, ScalarType arithmetic) =>
        parameter?.to(arithmetic).view(1, s.G, s.D, 1);

    /// <summary>
    /// z = (x − μ)·scale + β, with scale and β already shaped to broadcast against <paramref name="centred"/>.
    /// <para>
    /// Centred first, not folded into x·scale + (β − μ·scale): the fold is one pass fewer, but when
    /// |μ| ≫ σ both of its terms are |μ|/σ times larger than z and their float32 roundings stay in z
    /// (measured on float16 at mean 1000: y 9e-3 off in groups whose values were all equal, where z must be
    /// β exactly). x − μ is exact there, so z keeps the accuracy of μ itself.
    /// </para>
    /// </summary>
    public static Tensor PreActivation(Tensor centred, Tensor scale, Tensor? bias) =>
        bias is null ? centred * scale : torch.addcmul(bias, centred, scale, 1);

    /// <summary>
    /// dz = dy·act′(z) (SiLU: σ(z)·(1 + z·(1 − σ(z))); ReLU: 0 where z ≤ 0, else dy; GELU: Φ(z) + z·φ(z), Φ the
    /// standard normal CDF and φ its density). Differentiable, for the recorded backward.
    /// </summary>
    public static Tensor ActivationGradient(Tensor dy, Tensor z, Activation activation)
    {
        switch (activation)
        {
            case Activation.SiLU:
                var sigmoid = z.sigmoid();
                return dy * sigmoid * (1 + z * (1 - sigmoid));
            case Activation.ReLU:
                // PyTorch's threshold_backward: a select, not a product, so that a NaN dy where z ≤ 0 gives 0
                // (NaN·0 is NaN) and a NaN z passes dy through.
                return dy.masked_fill(z.le(0), 0);
            case Activation.GELU:
                var cdf = ((z * Math.Sqrt(0.5)).erf() + 1) * 0.5;
                var density = (z.square() * -0.5).exp() * (1 / Math.Sqrt(2 * Math.PI));
                return dy * (cdf + z * density);
            default:
                return dy;
        }
    }

    /// <summary>
    /// The gradients <paramref name="need"/> asks for, from dy and x − μ grouped as (N, G, D, S) and r as
    /// (N, G, 1, 1): dz = dy·act′(z + residual) with z rebuilt, the centred sums A = Σ dz and B = Σ dz·(x − μ)
    /// (not Σ dz·x − μ·Σ dz), then dx = a·dz + b·(x − μ) + k, dγ = Σ_n r·B and dβ = Σ_n A. dx comes back
    /// grouped; the residual's gradient is dz itself, grouped too, asked for only with an activation.
    /// </summary>
    public static (Tensor? Dx, Tensor? Dweight, Tensor? Dbias, Tensor? Dresidual) Backward(
        Tensor dy, Tensor centred, Tensor rstd, Epilogue epilogue, GroupNormShape s, GradientRequest need)
    {
        var arithmetic = centred.dtype;
        var gamma = PerChannel(epilogue.Weight, s, arithmetic);
        var a = Scale(rstd, gamma, s);
        if (epilogue.Activation != Activation.None)
        {
            var z = PreActivation(centred, a, PerChannel(epilogue.Bias, s, arithmetic));
            if (epilogue.Residual is { } residual) z = z + Grouped(residual, s, arithmetic);
            dy = ActivationGradient(dy, z, epilogue.Activation);
        }
        var sumA = dy.sum(dim: 3, keepdim: true);
        var sumB = (dy * centred).sum(dim: 3, keepdim: true);

        Tensor? dx = null, dweight = null, dbias = null;
        if (need.Input)
        {
            double inv = s.GroupSize == 0 ? 0 : 1.0 / s.GroupSize;
            // k from a as rounded, as in GroupNormMath: a·dz + k is then exactly 0 in a one-element group.
            var k = (sumA * a).sum(GroupDims, keepdim: true) * -inv;
            var b = rstd.pow(3) * (gamma is null ? sumB : sumB * gamma).sum(GroupDims, keepdim: true) * -inv;
            // One element per group: a·dz + k is exactly 0 only if a·dz is rounded on its own, and libtorch's
            // addcmul may fuse it into k + a·dz with one rounding, leaving a·dz's rounding error as dx. An
            // extra pass there, none for every other shape.
            dx = s.GroupSize == 1
                ? (dy * a + k).addcmul_(centred, b, 1)
                : torch.addcmul(k, centred, b, 1).addcmul_(dy, a, 1);
        }
        if (need.Weight) dweight = (sumB * rstd).sum(dim: 0).reshape(s.C).to(epilogue.ParameterType);
        if (need.Bias) dbias = sumA.sum(dim: 0).reshape(s.C).to(epilogue.ParameterType);
        return (dx, dweight, dbias, need.Residual ? dy : null);
    }

    /// <summary>A tensor of x's shape as (N, G, D, S) in the arithmetic type.</summary>
    public static Tensor Grouped(Tensor t, GroupNormShape s, ScalarType arithmetic)
    {
        var grouped = t.reshape(s.N, s.G, s.D, s.S);
        return grouped.dtype == arithmetic ? grouped : grouped.to(arithmetic);
    }
}
