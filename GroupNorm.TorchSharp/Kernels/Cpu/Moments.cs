using System;
using System.Runtime.CompilerServices;

namespace GroupNormalization.Kernels.Cpu;

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

    /// <summary>
    /// The serial step between a split plan's two phases in forward: merges each row's per-block moments,
    /// entry (row, block, j), into μ and r of statistics row row·perItem + j.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static unsafe void MergeBlocks(Moments* partial, in WorkPlan plan, long perItem, double* mean, double* rstd, double eps)
    {
        for (long row = 0; row < plan.Rows; row++)
        {
            for (long j = 0; j < perItem; j++)
            {
                var m = default(Moments);
                for (long k = 0; k < plan.Blocks; k++)
                    m.Merge(partial[(row * plan.Blocks + k) * perItem + j]);
                mean[row * perItem + j] = m.Mean;
                rstd[row * perItem + j] = GroupNormMath.Rstd(m.Variance, eps);
            }
        }
    }

    /// <summary>
    /// The serial step between a split plan's two phases in backward: adds each row's per-block sums,
    /// entry (row, block, j), into total row·perItem + j.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static unsafe void SumBlocks(double* partA, double* partB, in WorkPlan plan, long perItem, double* sumA, double* sumB)
    {
        for (long row = 0; row < plan.Rows; row++)
        {
            for (long j = 0; j < perItem; j++)
            {
                double a = 0, b = 0;
                for (long k = 0; k < plan.Blocks; k++)
                {
                    long at = (row * plan.Blocks + k) * perItem + j;
                    a += partA[at];
                    b += partB[at];
                }
                sumA[row * perItem + j] = a;
                sumB[row * perItem + j] = b;
            }
        }
    }
}
