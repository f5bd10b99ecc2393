using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Kernels;

/// <summary>
/// GroupNorm built from TorchSharp tensor operations (<see cref="TensorFormulas"/>), so it runs wherever
/// libtorch runs: CUDA, and the CPU when TorchSharp gives no tensor data addresses (see
/// <c>Interop/TorchSharpInternals.cs</c>); the tests run it beside the fused kernels as a second
/// implementation.
/// <para>
/// Statistics and coefficients are computed in the arithmetic type (<see cref="DTypeRules.Arithmetic"/>).
/// Forward centres x on μ in x's own layout, so that y keeps it, scales by the per-(n, c) r·γ and adds β
/// in one addcmul, then applies the activation in place. Backward rebuilds the pre-activation for act′(z)
/// from the saved μ and r.
/// </para>
/// </summary>
internal sealed class DeviceGenericKernel : IGroupNormKernel
{
    public static readonly DeviceGenericKernel Instance = new();

    private DeviceGenericKernel()
    {
    }

    public KernelKind Kind => KernelKind.DeviceGeneric;

    public Tensor Forward(Tensor x, Epilogue epilogue, GroupNormShape s, double eps, bool keepStatistics, out Statistics saved)
    {
        using var scope = torch.NewDisposeScope();
        var arithmetic = DTypeRules.Arithmetic(x.dtype);
        var (mean, rstd) = TensorFormulas.Moments(TensorFormulas.Grouped(x, s, arithmetic), eps);

        // Per-(n, c) coefficients against x itself, (N, C, 1, …), so that y keeps x's layout; a half x is
        // promoted to the arithmetic type by the subtraction.
        var view = BroadcastShape(x.ndim, s);
        var centred = x - mean.expand(s.N, s.G, s.D, 1).reshape(view);
        var scale = TensorFormulas.Scale(rstd, TensorFormulas.PerChannel(epilogue.Weight, s, arithmetic), s).reshape(view);
        var bias = epilogue.Bias?.to(arithmetic).view(BiasShape(view));
        var y = TensorFormulas.PreActivation(centred, scale, bias);
        if (epilogue.Residual is { } residual) y = y.add_(residual);
        // In the arithmetic type, before a half input's output is rounded once.
        if (epilogue.Activation == Activation.SiLU) y = y.silu_();
        else if (epilogue.Activation == Activation.ReLU) y = y.relu_();
        else if (epilogue.Activation == Activation.GELU) y = y.gelu_();
        if (y.dtype != x.dtype) y = y.to(x.dtype);

        saved = keepStatistics ? new Statistics(null, mean.MoveToOuterDisposeScope(), rstd.MoveToOuterDisposeScope()) : default;
        return y.MoveToOuterDisposeScope();
    }

    public (Tensor? Dx, Tensor? Dweight, Tensor? Dbias, Tensor? Dresidual) Backward(
        Tensor dy, Tensor x, Statistics saved, Epilogue epilogue, GroupNormShape s, GradientRequest need)
    {
        using var scope = torch.NewDisposeScope();
        var arithmetic = DTypeRules.Arithmetic(x.dtype);
        var centred = TensorFormulas.Grouped(x, s, arithmetic) - saved.Mean!.to(arithmetic);
        var (dx, dweight, dbias, dresidual) = TensorFormulas.Backward(
            TensorFormulas.Grouped(dy, s, arithmetic), centred, saved.Rstd!.to(arithmetic), epilogue, s, need);
        return (AsInput(dx, x)?.MoveToOuterDisposeScope(), dweight?.MoveToOuterDisposeScope(), dbias?.MoveToOuterDisposeScope(),
            AsInput(dresidual, x)?.MoveToOuterDisposeScope());
    }

    /// <summary>A grouped gradient in x's shape, dtype and layout.</summary>
    private static Tensor? AsInput(Tensor? grouped, Tensor x)
    {
        if (grouped is null) return null;
        var grad = grouped.reshape(x.shape);
        if (grad.dtype != x.dtype) grad = grad.to(x.dtype);
        return MatchLayout(grad, x);
    }

    /// <summary>(N, C, 1, …, 1): per-(n, c) coefficients broadcast over the spatial dimensions.</summary>
    private static long[] BroadcastShape(long rank, GroupNormShape s)
    {
        var shape = new long[rank];
        shape[0] = s.N;
        shape[1] = s.C;
        for (long i = 2; i < rank; i++) shape[i] = 1;
        return shape;
    }

    /// <summary>(1, C, 1, …, 1): β against x.</summary>
    private static long[] BiasShape(long[] broadcast)
    {
        var shape = (long[])broadcast.Clone();
        shape[0] = 1;
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
