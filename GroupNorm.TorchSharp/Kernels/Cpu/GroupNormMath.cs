using System;
using System.Numerics;
using System.Runtime.CompilerServices;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>
/// The formulas of Group Normalization, and the fused CPU kernels' arithmetic for them. Who shares what:
/// every loop under <c>Kernels/Cpu</c> takes its coefficients (rstd, the output's scale and shift, dx's b
/// and k, dγ and dβ, the μ split) from this class, and SiLU, GELU and their derivatives from <see cref="SiLUFormula"/> and
/// <see cref="GeluFormula"/>, each written once for every vector width. The tensor paths, the device-generic kernel and the recorded backward for
/// second derivatives, share <see cref="TensorFormulas"/>: the same formulas as TorchSharp operations,
/// written once for both. The two families are checked against each other and against libtorch by the
/// parity tests, not by sharing code: one computes in float64 coefficients over raw memory, the other in
/// the arithmetic type over tensors.
/// <code>
/// Notation: sample n, channel c in group g (D = C/G consecutive channels), spatial position s (S positions).
///           M = D·S elements share one set of statistics.
///
/// Forward   μ[n,g]  = (1/M) Σ x                          over c ∈ g and all s
///           σ²[n,g] = (1/M) Σ (x − μ)²                   (biased, as in PyTorch)
///           r[n,g]  = 1 / √(σ² + ε)
///           z       = (x − μ)·r·γ[c] + β[c]              γ = 1 and β = 0 when absent
///           y       = act(z)                              act: identity, SiLU z·σ(z), ReLU max(z, 0), or GELU z·Φ(z)
///
/// Backward  dz      = dy·act′(z)                          SiLU: σ(z)·(1 + z·(1 − σ(z)));
///                                                         ReLU: dz = 0 where z ≤ 0, else dy (a NaN z passes dy);
///                                                         GELU: Φ(z) + z·φ(z) (Φ normal CDF, φ its density);
///                                                         z is rebuilt from x, μ, r, γ, β, never saved
///           A[n,c]  = Σ_s dz                             per-(n, c) sums over spatial positions
///           B[n,c]  = Σ_s dz·(x − μ)                     centred: no cancellation when |μ| ≫ σ
///           dβ[c]   = Σ_n A[n,c]
///           dγ[c]   = Σ_n r[n,g]·B[n,c]
///           dx      = a[n,c]·dy + b[n,g]·(x − μ) + k[n,g], with
///               a = r·γ[c]
///               b = −r³ · (1/M) Σ_{c∈g} γ[c]·B[n,c]
///               k = −(1/M) Σ_{c∈g} a[c]·A[n,c]          (= −r·(1/M) Σ γ[c]·A[n,c])
/// </code>
/// The dx line is r·(g − mean(g) − x̂·mean(g·x̂)) with g = γ·dz and x̂ = (x − μ)·r, expanded so that one
/// pass over (x, dy) can write dx. Kernels keep x − μ as written rather than folding −b·μ into k,
/// because in float32 b·x and k would cancel when |μ| ≫ σ.
/// <para>
/// k is formed from a as the kernels round it, not from r and γ separately: then a·dz + k is the
/// deviation of a·dz from its group mean with the same a on both sides. For a group of one element
/// (D·S = 1) x − μ = 0 exactly, so b·(x − μ) = 0 and k = −a·dz: dx comes out exactly 0, as it is in exact
/// arithmetic. With a and k rounded from r·γ separately, dx was an ulp of a·dz instead (up to 6e-5 in
/// float32 at r = 1/√ε).
/// </para>
/// <para>
/// The kernels' per-channel coefficients are set up here too, in float64 and then rounded once to the
/// arithmetic type T. μ is split as μhi + μlo (<see cref="SplitMean{T}"/>): loops form x − μhi, which is
/// exact near the mean, and μlo is folded into the constant terms.
/// </para>
/// </summary>
internal static class GroupNormMath
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Rstd(double biasedVariance, double eps) => 1.0 / Math.Sqrt(biasedVariance + eps);

    /// <summary>
    /// b and k of the dx formula for one (n, g), from the group's sums Σ a[c]·A[n,c] (a as the kernel rounds
    /// it, see <see cref="Scale{T}"/>) and Σ γ[c]·B[n,c].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (double B, double K) InputGradientCoefficients(double rstd, double scaleA, double gammaB, double groupSize)
    {
        if (groupSize == 0) return (0, 0);
        double inv = 1.0 / groupSize;
        return (-rstd * rstd * rstd * gammaB * inv, -scaleA * inv);
    }

    /// <summary>a = r·γ[c], rounded to T: the scale of the output and the coefficient of dz in dx.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static T Scale<T>(double rstd, double gamma) where T : unmanaged, IFloatingPointIeee754<T> =>
        T.CreateTruncating(rstd * gamma);

    /// <summary>
    /// The output's constants for channel c: z = (x − μhi)·scale + shift with scale = a = r·γ[c] and
    /// shift = β[c] − μlo·scale (the scale as rounded to T, so that the fold is exact to T's precision).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (T Scale, T Shift) OutputCoefficients<T>(double rstd, double meanLo, double gamma, double beta)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        T scale = Scale<T>(rstd, gamma);
        return (scale, T.CreateTruncating(beta - meanLo * double.CreateTruncating(scale)));
    }

    /// <summary>
    /// b and k of the dx formula in T, for loops that form x − μhi: dx = a·dz + b·(x − μhi) + (k − b·μlo).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (T B, T K) InputGradientCoefficients<T>(double rstd, double scaleA, double gammaB, double groupSize, double meanLo)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        var (b, k) = InputGradientCoefficients(rstd, scaleA, gammaB, groupSize);
        T bt = T.CreateTruncating(b);
        return (bt, T.CreateTruncating(k - double.CreateTruncating(bt) * meanLo));
    }

    /// <summary>dγ[c] = Σ_n r[n,g]·B[n,c] and dβ[c] = Σ_n A[n,c], from the per-(n, c) sums of every sample.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static unsafe void ParameterGradients<T>(GroupNormShape s, double* rstd, double* sumA, double* sumB, T* dweight, T* dbias)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        for (long c = 0, g = 0; c < s.C; c++)
        {
            if (c == (g + 1) * s.D) g++;
            double dw = 0, db = 0;
            for (long n = 0; n < s.N; n++)
            {
                dw += rstd[n * s.G + g] * sumB[n * s.C + c];
                db += sumA[n * s.C + c];
            }
            if (dweight != null) dweight[c] = T.CreateTruncating(dw);
            if (dbias != null) dbias[c] = T.CreateTruncating(db);
        }
    }

    /// <summary>
    /// Moments from sums of deviations d = x − K from any shift K: μ = K + Σd/M, M2 = Σd² − (Σd)²/M.
    /// Exact algebra for every K; numerically it loses log₁₀(Σd²/M2) digits, so the kernels choose K near
    /// μ (the mean of a first piece of the data) and check with <see cref="ShiftWasClose"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Moments ShiftedMoments(double count, double shift, double sumDev, double sumSqDev) =>
        count == 0 ? default : new Moments(count, shift + sumDev / count, sumSqDev - sumDev * sumDev / count);

    /// <summary>
    /// Whether K was within √3·σ of μ (Σd² ≤ 4·M2): then at most 0.6 of a digit was lost to cancellation.
    /// Otherwise (data that drift along the image, so the first piece is not typical) the kernels sum again
    /// with K = μ.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool ShiftWasClose(double count, double sumDev, double sumSqDev) =>
        count == 0 || sumSqDev <= 4 * (sumSqDev - sumDev * sumDev / count);

    /// <summary>
    /// Splits a float64 mean into a pair in T whose sum carries ~48 bits for float32, so that float32 kernels
    /// can form x − μ as (x − hi) − lo: x − hi is exact near the mean, and lo restores what rounding μ lost.
    /// In float64, hi = μ and lo = 0.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (T Hi, T Lo) SplitMean<T>(double mean) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T hi = T.CreateTruncating(mean);
        return (hi, T.CreateTruncating(mean - double.CreateTruncating(hi)));
    }
}
