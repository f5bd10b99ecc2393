using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Kernels;

/// <summary>
/// GroupNorm built from TorchSharp tensor operations, so it runs wherever libtorch runs: CUDA, and the
/// CPU when TorchSharp gives no tensor data addresses (see <c>Interop/TorchSharpInternals.cs</c>); the
/// tests run it beside the fused kernels as a second implementation. Formulas: <see cref="GroupNormMath"/>.
/// <para>
/// Statistics and coefficients are computed in the "opmath" type (float32 for half types, otherwise the
/// input's own). Forward centres x on μ, then scales by the per-(n, c) r·γ and adds β in one fused addcmul
/// (see <see cref="PreActivation"/> for why not fold μ into the shift), then applies the activation in
/// place. Backward rebuilds the pre-activation for act′(z) and uses the centred sums B = Σ dz·(x − μ),
/// not Σ dz·x − μ·Σ dz.
/// </para>
/// </summary>
internal static class DeviceGenericKernel
{
    internal static ScalarType OpMathType(ScalarType dtype) =>
        dtype is ScalarType.Float16 or ScalarType.BFloat16 ? ScalarType.Float32 : dtype;

    public static (Tensor Y, Tensor Mean, Tensor Rstd) Forward(Tensor x, Epilogue epilogue, GroupNormShape s, double eps)
    {
        var (weight, bias, activation, _) = epilogue;
        using var scope = torch.NewDisposeScope();
        var opmath = OpMathType(x.dtype);

        var grouped = x.reshape(s.N, s.G, s.GroupSize);
        if (grouped.dtype != opmath) grouped = grouped.to(opmath);
        var (variance, mean) = grouped.var_mean(new long[] { 2 }, unbiased: false);
        var rstd = variance.add_(eps).rsqrt_();

        var view = BroadcastShape(x.ndim, s);
        // x − μ per channel, in x's layout (a half x is promoted to the opmath type by the subtraction).
        var centred = x - mean.view(s.N, s.G, 1).expand(s.N, s.G, s.D).reshape(view);
        var y = PreActivation(centred, Scale(rstd, weight, s, opmath), bias, opmath, view);
        // In the opmath type, before a half input's output is rounded once.
        if (activation == Activation.SiLU) y = y.silu_();
        else if (activation == Activation.ReLU) y = y.relu_();
        if (y.dtype != x.dtype) y = y.to(x.dtype);

        return (y.MoveToOuterDisposeScope(), mean.MoveToOuterDisposeScope(), rstd.MoveToOuterDisposeScope());
    }

    public static (Tensor? Dx, Tensor? Dweight, Tensor? Dbias) Backward(
        Tensor dy, Tensor x, Tensor mean, Tensor rstd, Epilogue epilogue, GroupNormShape s, GradientRequest need)
    {
        using var scope = torch.NewDisposeScope();
        var (weight, bias, activation, _) = epilogue;
        var opmath = OpMathType(x.dtype);
        var parameterType = epilogue.ParameterType;

        var xs = x.reshape(s.N, s.G, s.D, s.S);
        var dys = dy.reshape(s.N, s.G, s.D, s.S);
        if (xs.dtype != opmath) xs = xs.to(opmath);
        if (dys.dtype != opmath) dys = dys.to(opmath);
        var m = mean.to(opmath).view(s.N, s.G, 1, 1);
        var r = rstd.to(opmath).view(s.N, s.G, 1);

        var centred = xs - m;
        if (activation != Activation.None)
        {
            // The pre-activation, rebuilt as forward formed it rather than saved; from here on dy is dz.
            var z = PreActivation(centred, Scale(r.view(s.N, s.G), weight, s, opmath), bias, opmath, new[] { s.N, s.G, s.D, 1L });
            dys = ActivationGradient(dys, z, activation);
        }
        var sumA = dys.sum(dim: 3);                // A[n, g, j] = Σ_s dy
        var sumB = (dys * centred).sum(dim: 3);    // B[n, g, j] = Σ_s dy·(x − μ)

        Tensor? dx = null, dweight = null, dbias = null;
        if (need.Input)
        {
            var gamma = weight?.to(opmath).view(1, s.G, s.D);
            var a = gamma is null ? r : r * gamma;
            // k from a as rounded, as in GroupNormMath: a·dz + k is then exactly 0 in a one-element group.
            var scaleA = (sumA * a).sum(dim: 2, keepdim: true);
            var gammaB = (gamma is null ? sumB : sumB * gamma).sum(dim: 2, keepdim: true);
            double inv = s.GroupSize == 0 ? 0 : 1.0 / s.GroupSize;
            var b = r.pow(3).mul_(gammaB).mul_(-inv);
            var k = scaleA.mul_(-inv);
            // One element per group: a·dz + k is exactly 0 only if a·dz is rounded on its own, and libtorch's
            // addcmul may fuse it into k + a·dz with one rounding, leaving a·dz's rounding error as dx. An
            // extra pass there, none for every other shape.
            dx = s.GroupSize == 1
                ? (dys * a.unsqueeze(3)).add_(k.unsqueeze(3)).addcmul_(centred, b.unsqueeze(3), 1).reshape(x.shape)
                : torch.addcmul(k.unsqueeze(3), centred, b.unsqueeze(3), 1)
                    .addcmul_(dys, a.unsqueeze(3), 1)
                    .reshape(x.shape);
            if (dx.dtype != x.dtype) dx = dx.to(x.dtype);
            dx = MatchLayout(dx, x);
        }
        if (need.Weight)
        {
            dweight = (sumB * r).sum(dim: 0).reshape(s.C);
            if (dweight.dtype != parameterType) dweight = dweight.to(parameterType);
        }
        if (need.Bias)
        {
            dbias = sumA.sum(dim: 0).reshape(s.C);
            if (dbias.dtype != parameterType) dbias = dbias.to(parameterType);
        }

        return (dx?.MoveToOuterDisposeScope(), dweight?.MoveToOuterDisposeScope(), dbias?.MoveToOuterDisposeScope());
    }

    /// <summary>The per-(n, c) scale r·γ[c], shaped (N, G, D), from the (N, G) rstd in the opmath type.</summary>
    private static Tensor Scale(Tensor rstd, Tensor? weight, GroupNormShape s, ScalarType opmath)
    {
        var r = rstd.view(s.N, s.G, 1);
        return weight is null ? r.expand(s.N, s.G, s.D) : r * weight.to(opmath).view(1, s.G, s.D);
    }

    /// <summary>
    /// z = (x − μ)·scale + β, with <paramref name="scale"/> and β viewed as <paramref name="view"/>: (N, C, 1, …)
    /// against x itself in forward, so that y keeps x's layout, and (N, G, D, 1) against x grouped in
    /// backward, where z is rebuilt exactly as forward formed it.
    /// <para>
    /// Centred first, not folded into x·scale + (β − μ·scale): the fold is one pass fewer, but when
    /// |μ| ≫ σ both of its terms are |μ|/σ times larger than z and their float32 roundings stay in z
    /// (measured on float16 at mean 1000: y 9e-3 off in groups whose values were all equal, where z must be
    /// β exactly). x − μ is exact there, so z keeps the accuracy of μ itself.
    /// </para>
    /// </summary>
    private static Tensor PreActivation(Tensor centred, Tensor scale, Tensor? bias, ScalarType opmath, long[] view)
    {
        if (bias is null) return centred * scale.reshape(view);
        var biasView = (long[])view.Clone();
        biasView[0] = 1;
        return torch.addcmul(bias.to(opmath).reshape(biasView), centred, scale.reshape(view), 1);
    }

    /// <summary>
    /// dz = dy·act′(z), out of place so that it can be recorded for double backward (formulas in
    /// <see cref="GroupNormMath"/>).
    /// </summary>
    internal static Tensor ActivationGradient(Tensor dy, Tensor z, Activation activation)
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
            default:
                return dy;
        }
    }

    /// <summary>(N, C, 1, …, 1): per-(n, c) coefficients broadcast over the spatial dimensions.</summary>
    internal static long[] BroadcastShape(long rank, GroupNormShape s)
    {
        var shape = new long[rank];
        shape[0] = s.N;
        shape[1] = s.C;
        for (long i = 2; i < rank; i++) shape[i] = 1;
        return shape;
    }

    /// <summary>Gives a gradient the input's channels-last layout when the input had it.</summary>
    private static Tensor MatchLayout(Tensor grad, Tensor like)
    {
        if (like.ndim < 3) return grad;
        return TensorMemory.DenseLayout(like) == ChannelLayout.ChannelsLast && TensorMemory.DenseLayout(grad) != ChannelLayout.ChannelsLast
            ? TensorMemory.DenseCopy(grad, ChannelLayout.ChannelsLast)
            : grad;
    }
}
