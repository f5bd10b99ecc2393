using System;

namespace GroupNormalization.Kernels;

/// <summary>
/// The formulas of Group Normalization, in one place. Every kernel implements exactly these.
/// <code>
/// Notation: sample n, channel c in group g (D = C/G consecutive channels), spatial position s (S positions).
///           M = D·S elements share one set of statistics.
///
/// Forward   μ[n,g]  = (1/M) Σ x                          over c ∈ g and all s
///           σ²[n,g] = (1/M) Σ (x − μ)²                   (biased, as in PyTorch)
///           r[n,g]  = 1 / √(σ² + ε)
///           y       = (x − μ)·r·γ[c] + β[c]              γ = 1 and β = 0 when absent
///
/// Backward  A[n,c]  = Σ_s dy                             per-(n, c) sums over spatial positions
///           B[n,c]  = Σ_s dy·(x − μ)                     centred: no cancellation when |μ| ≫ σ
///           dβ[c]   = Σ_n A[n,c]
///           dγ[c]   = Σ_n r[n,g]·B[n,c]
///           dx      = a[n,c]·dy + b[n,g]·(x − μ) + k[n,g], with
///               a = r·γ[c]
///               b = −r³ · (1/M) Σ_{c∈g} γ[c]·B[n,c]
///               k = −r  · (1/M) Σ_{c∈g} γ[c]·A[n,c]
/// </code>
/// The dx line is r·(g − mean(g) − x̂·mean(g·x̂)) with g = γ·dy and x̂ = (x − μ)·r, expanded so that one
/// pass over (x, dy) can write dx. Kernels keep x − μ as written rather than folding −b·μ into k,
/// because in float32 b·x and k would cancel when |μ| ≫ σ.
/// </summary>
internal static class GroupNormMath
{
    public static double Rstd(double biasedVariance, double eps) => 1.0 / Math.Sqrt(biasedVariance + eps);

    /// <summary>b and k of the dx formula for one (n, g), from the γ-weighted sums over the group's channels.</summary>
    public static (double B, double K) InputGradientCoefficients(double rstd, double gammaA, double gammaB, double groupSize)
    {
        if (groupSize == 0) return (0, 0);
        double inv = 1.0 / groupSize;
        return (-rstd * rstd * rstd * gammaB * inv, -rstd * gammaA * inv);
    }

    /// <summary>
    /// Moments from sums of deviations d = x − K from any shift K: μ = K + Σd/M, M2 = Σd² − (Σd)²/M.
    /// Exact algebra for every K; numerically it loses log₁₀(Σd²/M2) digits, so the kernels choose K near
    /// μ (the mean of a first piece of the data) and check with <see cref="ShiftWasClose"/>.
    /// </summary>
    public static Moments ShiftedMoments(double count, double shift, double sumDev, double sumSqDev) =>
        count == 0 ? default : new Moments(count, shift + sumDev / count, sumSqDev - sumDev * sumDev / count);

    /// <summary>
    /// Whether K was within √3·σ of μ (Σd² ≤ 4·M2): then at most 0.6 of a digit was lost to cancellation.
    /// Otherwise (data that drift along the image, so the first piece is not typical) the kernels sum again
    /// with K = μ.
    /// </summary>
    public static bool ShiftWasClose(double count, double sumDev, double sumSqDev) =>
        count == 0 || sumSqDev <= 4 * (sumSqDev - sumDev * sumDev / count);

    /// <summary>
    /// Splits a float64 mean into a float32 pair whose sum carries ~48 bits, so that float32 kernels can
    /// form x − μ as (x − hi) − lo: x − hi is exact near the mean, and lo restores what rounding μ lost.
    /// </summary>
    public static (float Hi, float Lo) SplitMean(double mean)
    {
        float hi = (float)mean;
        return (hi, (float)(mean - hi));
    }
}

/// <summary>
/// Count, mean and sum of squared deviations of a set of values; merging two sets uses Chan et al.'s
/// pairwise update, which stays stable however large the mean is relative to the spread.
/// </summary>
internal struct Moments
{
    public double Count;
    public double Mean;
    public double M2;

    public Moments(double count, double mean, double m2)
    {
        Count = count;
        Mean = mean;
        M2 = m2;
    }

    public void Merge(in Moments other)
    {
        if (other.Count == 0) return;
        if (Count == 0)
        {
            this = other;
            return;
        }
        double n = Count + other.Count;
        double delta = other.Mean - Mean;
        Mean += delta * (other.Count / n);
        M2 += other.M2 + delta * delta * (Count * other.Count / n);
        Count = n;
    }

    /// <summary>Biased variance, σ² = M2 / count (0 for an empty set).</summary>
    public readonly double Variance => Count > 0 ? Math.Max(M2, 0) / Count : 0;
}
