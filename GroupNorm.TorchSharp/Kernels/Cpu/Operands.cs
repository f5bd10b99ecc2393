using System.Numerics;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>
/// Checked pointers into the tensors of one forward call: x and y in the stored type, γ and β (null when
/// absent) in the arithmetic type, and the caller-owned per-(n, g) statistics that forward fills.
/// </summary>
internal readonly unsafe struct ForwardOperands<TS, T>(TS* x, TS* y, T* weight, T* bias, double* mean, double* rstd)
    where TS : unmanaged
    where T : unmanaged, IFloatingPointIeee754<T>
{
    public readonly TS* X = x, Y = y;
    public readonly T* Weight = weight, Bias = bias;
    public readonly double* Mean = mean, Rstd = rstd;
}

/// <summary>
/// Checked pointers for one backward call: dx is null when x needs no gradient; sumA and sumB receive the
/// per-(n, c) sums A = Σ dz and B = Σ dz·(x − μ) (indexed n·C + c) that the parameter gradients are made from.
/// </summary>
internal readonly unsafe struct BackwardOperands<TS, T>(
    TS* x, TS* dy, TS* dx, T* weight, T* bias, double* mean, double* rstd, double* sumA, double* sumB)
    where TS : unmanaged
    where T : unmanaged, IFloatingPointIeee754<T>
{
    public readonly TS* X = x, Dy = dy, Dx = dx;
    public readonly T* Weight = weight, Bias = bias;
    public readonly double* Mean = mean, Rstd = rstd, SumA = sumA, SumB = sumB;
}

/// <summary>γ[c] and β[c] in float64, with PyTorch's defaults for an absent parameter.</summary>
internal static unsafe class ChannelParameters
{
    public static double Gamma<T>(T* w, long c) where T : unmanaged, IFloatingPointIeee754<T> => w == null ? 1.0 : double.CreateTruncating(w[c]);

    public static double Beta<T>(T* b, long c) where T : unmanaged, IFloatingPointIeee754<T> => b == null ? 0.0 : double.CreateTruncating(b[c]);
}

/// <summary>
/// Whether backward keeps dz = dy·act′(z) in dx's memory between its two passes. The sums pass computes dz
/// anyway; written to dx (which the second pass overwrites in place), it spares the second pass a second
/// evaluation of act′, which for SiLU is an exponential and a division per element, the most expensive
/// arithmetic in the kernel. Only where dz fits the stored type exactly (float32, float64): a half-type dx
/// would round it, so half types evaluate act′ twice.
/// </summary>
internal static class GradientStash
{
    public static bool Used<TS, T, TA>() where TA : struct, IActivation => !TA.IsIdentity && typeof(TS) == typeof(T);
}
