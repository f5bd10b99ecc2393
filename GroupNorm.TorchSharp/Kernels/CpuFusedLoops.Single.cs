using System;
using System.Numerics;
using System.Runtime.CompilerServices;

namespace GroupNormalization.Kernels;

/// <summary>
/// float32 versions of the reductions, several times cheaper than widening every element to float64.
/// <para>
/// Why they stay accurate: every value summed is a deviation x − m from a mean m of the same segment
/// or piece (formed as (x − mhi) − mlo, see <see cref="GroupNormMath.SplitMean"/>), so terms are of
/// the order of σ, not of |μ|; and no float32 accumulator lane takes more than <see cref="FoldTerms"/>
/// terms before it is folded into float64, which bounds its rounding error to about
/// FoldTerms·2⁻²⁴ of its own partial sum. The float64 totals then carry the result. The plain sum of
/// the first pass (<see cref="RoughSum{T}"/>) may be coarse: it only picks m.
/// </para>
/// </summary>
internal static unsafe partial class CpuFusedLoops
{
    /// <summary>Terms per float32 accumulator lane between folds into float64.</summary>
    private const int FoldTerms = 16;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<double> WidenSum(Vector<float> v)
    {
        Vector.Widen(v, out var lo, out var hi);
        return lo + hi;
    }

    /// <summary>Σ (p[i] − m) and Σ (p[i] − m)² of float32 data.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static (double Dev, double SqDev) SumDeviationsSingle(float* p, long n, double m)
    {
        var (mh, ml) = GroupNormMath.SplitMean(m);
        long i = 0;
        double s = 0, q = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<float>.Count;
            var vh = new Vector<float>(mh);
            var vl = new Vector<float>(ml);
            Vector<double> ds = default, dq = default;
            while (i <= n - 4 * w)
            {
                long stop = Math.Min(n - 4 * w, i + (FoldTerms - 1) * 4L * w);
                Vector<float> s0 = default, s1 = default, s2 = default, s3 = default;
                Vector<float> q0 = default, q1 = default, q2 = default, q3 = default;
                for (; i <= stop; i += 4 * w)
                {
                    var d0 = (Load(p + i) - vh) - vl;
                    var d1 = (Load(p + i + w) - vh) - vl;
                    var d2 = (Load(p + i + 2 * w) - vh) - vl;
                    var d3 = (Load(p + i + 3 * w) - vh) - vl;
                    s0 += d0;
                    s1 += d1;
                    s2 += d2;
                    s3 += d3;
                    q0 += d0 * d0;
                    q1 += d1 * d1;
                    q2 += d2 * d2;
                    q3 += d3 * d3;
                }
                ds += WidenSum((s0 + s1) + (s2 + s3));
                dq += WidenSum((q0 + q1) + (q2 + q3));
            }
            s = Vector.Sum(ds);
            q = Vector.Sum(dq);
        }
        for (; i < n; i++)
        {
            double d = p[i] - m;
            s += d;
            q += d * d;
        }
        return (s, q);
    }

    /// <summary>Σ dy and Σ dy·(x − m) of float32 data.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static (double A, double B) GradientSumsSingle(float* x, float* dy, long n, double m)
    {
        var (mh, ml) = GroupNormMath.SplitMean(m);
        long i = 0;
        double a = 0, b = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<float>.Count;
            var vh = new Vector<float>(mh);
            var vl = new Vector<float>(ml);
            Vector<double> da = default, db = default;
            while (i <= n - 4 * w)
            {
                long stop = Math.Min(n - 4 * w, i + (FoldTerms - 1) * 4L * w);
                Vector<float> a0 = default, a1 = default, a2 = default, a3 = default;
                Vector<float> b0 = default, b1 = default, b2 = default, b3 = default;
                for (; i <= stop; i += 4 * w)
                {
                    var g0 = Load(dy + i);
                    var g1 = Load(dy + i + w);
                    var g2 = Load(dy + i + 2 * w);
                    var g3 = Load(dy + i + 3 * w);
                    a0 += g0;
                    a1 += g1;
                    a2 += g2;
                    a3 += g3;
                    b0 += g0 * ((Load(x + i) - vh) - vl);
                    b1 += g1 * ((Load(x + i + w) - vh) - vl);
                    b2 += g2 * ((Load(x + i + 2 * w) - vh) - vl);
                    b3 += g3 * ((Load(x + i + 3 * w) - vh) - vl);
                }
                da += WidenSum((a0 + a1) + (a2 + a3));
                db += WidenSum((b0 + b1) + (b2 + b3));
            }
            a = Vector.Sum(da);
            b = Vector.Sum(db);
        }
        for (; i < n; i++)
        {
            double g = dy[i];
            a += g;
            b += g * (x[i] - m);
        }
        return (a, b);
    }

    /// <summary>sum[j] += Σ_r x[r·C + j] for float32 data (the coarse first pass: it only picks m).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void AccumulateColumnsSingle(float* x, long rows, long c, double* sum)
    {
        long j = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<float>.Count;
            for (; j <= c - w; j += w)
            {
                Vector<float> a0 = default, a1 = default, a2 = default, a3 = default;
                float* p = x + j;
                long r = 0;
                for (; r + 3 < rows; r += 4)
                {
                    a0 += Load(p + r * c);
                    a1 += Load(p + (r + 1) * c);
                    a2 += Load(p + (r + 2) * c);
                    a3 += Load(p + (r + 3) * c);
                }
                for (; r < rows; r++) a0 += Load(p + r * c);
                Vector.Widen((a0 + a1) + (a2 + a3), out var lo, out var hi);
                AddWide(sum + j, lo, hi);
            }
        }
        for (; j < c; j++)
        {
            double acc = 0;
            for (long r = 0; r < rows; r++) acc += x[r * c + j];
            sum[j] += acc;
        }
    }

    /// <summary>Splits the per-channel float64 means m[j .. j + w) into float32 hi and lo vectors.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SplitMeans(double* m, out Vector<float> hi, out Vector<float> lo)
    {
        int w = Vector<float>.Count;
        float* h = stackalloc float[w];
        float* l = stackalloc float[w];
        for (int k = 0; k < w; k++) (h[k], l[k]) = GroupNormMath.SplitMean(m[k]);
        hi = Load(h);
        lo = Load(l);
    }

    /// <summary>dev[j] += Σ_r (x − m[j]); sq[j] += Σ_r (x − m[j])², per channel j, for float32 data.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void AccumulateColumnDeviationsSingle(float* x, long rows, long c, double* m, double* dev, double* sq)
    {
        long j = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<float>.Count;
            for (; j <= c - w; j += w)
            {
                SplitMeans(m + j, out var vh, out var vl);
                float* p = x + j;
                long r = 0;
                while (r < rows)
                {
                    // Four rows per step, so that four independent chains hide the add latency.
                    long r4 = Math.Min(rows & ~3L, r + 4L * FoldTerms);
                    Vector<float> s0 = default, s1 = default, s2 = default, s3 = default;
                    Vector<float> q0 = default, q1 = default, q2 = default, q3 = default;
                    for (; r < r4; r += 4)
                    {
                        var d0 = (Load(p + r * c) - vh) - vl;
                        var d1 = (Load(p + (r + 1) * c) - vh) - vl;
                        var d2 = (Load(p + (r + 2) * c) - vh) - vl;
                        var d3 = (Load(p + (r + 3) * c) - vh) - vl;
                        s0 += d0;
                        s1 += d1;
                        s2 += d2;
                        s3 += d3;
                        q0 += d0 * d0;
                        q1 += d1 * d1;
                        q2 += d2 * d2;
                        q3 += d3 * d3;
                    }
                    if (r4 == (rows & ~3L))
                    {
                        // The last one to three rows.
                        for (; r < rows; r++)
                        {
                            var d = (Load(p + r * c) - vh) - vl;
                            s0 += d;
                            q0 += d * d;
                        }
                    }
                    Vector.Widen((s0 + s1) + (s2 + s3), out var sl, out var sh);
                    Vector.Widen((q0 + q1) + (q2 + q3), out var ql, out var qh);
                    AddWide(dev + j, sl, sh);
                    AddWide(sq + j, ql, qh);
                }
            }
        }
        for (; j < c; j++)
        {
            double sd = 0, sqd = 0;
            for (long r = 0; r < rows; r++)
            {
                double d = x[r * c + j] - m[j];
                sd += d;
                sqd += d * d;
            }
            dev[j] += sd;
            sq[j] += sqd;
        }
    }

    /// <summary>sumA[j] += Σ_r dy; sumB[j] += Σ_r dy·(x − m[j]), per channel j, for float32 data.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void AccumulateGradientColumnsSingle(float* x, float* dy, long rows, long c, double* m, double* sumA, double* sumB)
    {
        long j = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<float>.Count;
            for (; j <= c - w; j += w)
            {
                SplitMeans(m + j, out var vh, out var vl);
                float* px = x + j;
                float* pg = dy + j;
                long r = 0;
                while (r < rows)
                {
                    long r4 = Math.Min(rows & ~3L, r + 4L * FoldTerms);
                    Vector<float> a0 = default, a1 = default, a2 = default, a3 = default;
                    Vector<float> b0 = default, b1 = default, b2 = default, b3 = default;
                    for (; r < r4; r += 4)
                    {
                        var g0 = Load(pg + r * c);
                        var g1 = Load(pg + (r + 1) * c);
                        var g2 = Load(pg + (r + 2) * c);
                        var g3 = Load(pg + (r + 3) * c);
                        a0 += g0;
                        a1 += g1;
                        a2 += g2;
                        a3 += g3;
                        b0 += g0 * ((Load(px + r * c) - vh) - vl);
                        b1 += g1 * ((Load(px + (r + 1) * c) - vh) - vl);
                        b2 += g2 * ((Load(px + (r + 2) * c) - vh) - vl);
                        b3 += g3 * ((Load(px + (r + 3) * c) - vh) - vl);
                    }
                    if (r4 == (rows & ~3L))
                    {
                        for (; r < rows; r++)
                        {
                            var g = Load(pg + r * c);
                            a0 += g;
                            b0 += g * ((Load(px + r * c) - vh) - vl);
                        }
                    }
                    Vector.Widen((a0 + a1) + (a2 + a3), out var al, out var ah);
                    Vector.Widen((b0 + b1) + (b2 + b3), out var bl, out var bh);
                    AddWide(sumA + j, al, ah);
                    AddWide(sumB + j, bl, bh);
                }
            }
        }
        for (; j < c; j++)
        {
            double a = 0, b = 0;
            for (long r = 0; r < rows; r++)
            {
                double g = dy[r * c + j];
                a += g;
                b += g * (x[r * c + j] - m[j]);
            }
            sumA[j] += a;
            sumB[j] += b;
        }
    }
}
