using System.Numerics;
using System.Runtime.CompilerServices;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>
/// One forward call as <see cref="CpuFusedKernel"/> hands it to a layout kernel: x, y and the residual
/// (null when absent) in the stored type and one layout, γ and β (null when absent) in the arithmetic
/// type, untyped until the entry's type parameters give them their types (<see cref="ForwardOperands{TS, T}"/>); the caller-owned per-(n, g) statistics
/// that forward fills; the geometry and the plan.
/// </summary>
internal unsafe struct ForwardCall
{
    public void* X, Y, Residual, Weight, Bias;
    public double* Mean, Rstd;
    public GroupNormShape Shape;
    public double Eps;
    public WorkPlan Plan;
}

/// <summary>
/// One backward call: dx is null when x needs no gradient, the residual null when forward had none or
/// there is no activation to rebuild, and dr (dz = dy·act′(z + r), the residual's gradient) null unless
/// asked for; sumA and sumB receive the per-(n, c) sums A = Σ dz and B = Σ dz·(x − μ) (indexed n·C + c)
/// that the parameter gradients are made from.
/// </summary>
internal unsafe struct BackwardCall
{
    public void* X, Dy, Dx, Residual, Dr, Weight, Bias;
    public double* Mean, Rstd, SumA, SumB;
    public GroupNormShape Shape;
    public WorkPlan Plan;
}

/// <summary>A <see cref="ForwardCall"/>'s pointers with their types.</summary>
internal readonly unsafe struct ForwardOperands<TS, T>(ForwardCall* call)
    where TS : unmanaged
    where T : unmanaged, IFloatingPointIeee754<T>
{
    public readonly TS* X = (TS*)call->X, Y = (TS*)call->Y, Residual = (TS*)call->Residual;
    public readonly T* Weight = (T*)call->Weight, Bias = (T*)call->Bias;
    public readonly double* Mean = call->Mean, Rstd = call->Rstd;
}

/// <summary>A <see cref="BackwardCall"/>'s pointers with their types.</summary>
internal readonly unsafe struct BackwardOperands<TS, T>(BackwardCall* call)
    where TS : unmanaged
    where T : unmanaged, IFloatingPointIeee754<T>
{
    public readonly TS* X = (TS*)call->X, Dy = (TS*)call->Dy, Dx = (TS*)call->Dx, Residual = (TS*)call->Residual, Dr = (TS*)call->Dr;
    public readonly T* Weight = (T*)call->Weight, Bias = (T*)call->Bias;
    public readonly double* Mean = call->Mean, Rstd = call->Rstd, SumA = call->SumA, SumB = call->SumB;

    /// <summary>
    /// Where the sums pass leaves dz for the input-gradient pass: dr, which is dz, when asked for; else dx's
    /// own memory when <see cref="GradientStash"/> applies; else nowhere.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public TS* DzStash<TA>() where TA : struct, IActivation =>
        TA.IsIdentity ? null : Dr != null ? Dr : Dx != null && GradientStash.Used<TS, T, TA>() ? Dx : null;
}

/// <summary>
/// One (n, g) group's constants, as every element-wise loop of both layouts needs them: μ split as
/// Hi + Lo (<see cref="GroupNormMath.SplitMean{T}"/>), r, and per channel the pre-activation's scale and
/// shift from γ and β (absent: 1 and 0).
/// </summary>
internal readonly unsafe struct GroupConstants<T>
    where T : unmanaged, IFloatingPointIeee754<T>
{
    public readonly T Hi, Lo;
    private readonly double _rstd, _meanLo;
    private readonly T* _weight, _bias;

    public GroupConstants(double mean, double rstd, T* weight, T* bias)
    {
        (Hi, Lo) = GroupNormMath.SplitMean<T>(mean);
        _meanLo = double.CreateTruncating(Lo);
        _rstd = rstd;
        _weight = weight;
        _bias = bias;
    }

    /// <summary>z = (x − Hi)·Scale + Shift for channel c (<see cref="GroupNormMath.OutputCoefficients{T}"/>); Scale is also dx's a.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public (T Scale, T Shift) Channel(long c) =>
        GroupNormMath.OutputCoefficients<T>(_rstd, _meanLo, Gamma(c), _bias == null ? 0.0 : double.CreateTruncating(_bias[c]));

    /// <summary>
    /// dx's b and k for the group (<see cref="GroupNormMath.InputGradientCoefficients{T}"/>), from the sums A and B
    /// of its <paramref name="channels"/> channels from <paramref name="firstChannel"/> on, at sumA[j] and sumB[j].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public (T B, T K) InputGradient(long firstChannel, long channels, double* sumA, double* sumB, double groupSize)
    {
        double scaleA = 0, gammaB = 0;
        for (long j = 0; j < channels; j++)
        {
            double gamma = Gamma(firstChannel + j);
            // a as the loops multiply dz by it, so that k cancels a·dz exactly where it should (GroupNormMath's remarks).
            scaleA += double.CreateTruncating(GroupNormMath.Scale<T>(_rstd, gamma)) * sumA[j];
            gammaB += gamma * sumB[j];
        }
        return GroupNormMath.InputGradientCoefficients<T>(_rstd, scaleA, gammaB, groupSize, _meanLo);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private double Gamma(long c) => _weight == null ? 1.0 : double.CreateTruncating(_weight[c]);
}

/// <summary>
/// Whether backward's second pass reads dz = dy·act′(z) as the first pass stored it (in dr when the
/// residual's gradient is asked for, else in dx's memory) instead of evaluating act′ again. The sums pass computes dz
/// anyway; written to dx (which the second pass overwrites in place), it spares the second pass a second
/// evaluation of act′, which for SiLU is an exponential and a division per element, the most expensive
/// arithmetic in the kernel. Only where dz fits the stored type exactly (float32, float64): a half-type dx
/// would round it, so half types evaluate act′ twice.
/// </summary>
internal static class GradientStash
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool Used<TS, T, TA>() where TA : struct, IActivation => !TA.IsIdentity && typeof(TS) == typeof(T);
}
