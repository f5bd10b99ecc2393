using System;
using System.Numerics;
using System.Runtime.CompilerServices;

namespace GroupNormalization.Kernels;

/// <summary>
/// The fused kernels' reductions. Each returns or adds float64 sums, but accumulates in T: widening every
/// float32 element to float64 made these loops the kernels' bottleneck.
/// <para>
/// Why float32 accumulation stays accurate: every value summed is a deviation x − m from a shift m close
/// to the data's mean (formed as (x − mhi) − mlo, see <see cref="GroupNormMath.SplitMean"/>), so terms
/// are of the order of σ, not of |μ|; and no accumulator lane takes more than <see cref="FoldTerms"/>
/// terms before it is folded into float64, which bounds its rounding error to about FoldTerms·2⁻²⁴ of
/// its own partial sum. The float64 totals then carry the result. Four independent accumulators per
/// loop hide the latency of the adds.
/// </para>
/// </summary>
internal static unsafe partial class CpuFusedLoops
{
    /// <summary>Terms per accumulator lane between folds into float64.</summary>
    private const int FoldTerms = 16;

    /// <summary>v's lanes as float64, pairwise summed when T is float32 (two lanes per float64 lane).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<double> ToDoubleLanes<T>(Vector<T> v) where T : unmanaged
    {
        if (typeof(T) == typeof(float))
        {
            // WidenLower/WidenUpper rather than Widen(v, out, out): the JIT left the latter as a call.
            var f = v.As<T, float>();
            return Vector.WidenLower(f) + Vector.WidenUpper(f);
        }
        return v.As<T, double>();
    }

    /// <summary>p[0 .. Vector&lt;T&gt;.Count) += v, in float64.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AddToDoubles<T>(double* p, Vector<T> v) where T : unmanaged
    {
        int h = Vector<double>.Count;
        if (typeof(T) == typeof(float))
        {
            var f = v.As<T, float>();
            Unsafe.WriteUnaligned(p, Unsafe.ReadUnaligned<Vector<double>>(p) + Vector.WidenLower(f));
            Unsafe.WriteUnaligned(p + h, Unsafe.ReadUnaligned<Vector<double>>(p + h) + Vector.WidenUpper(f));
        }
        else
        {
            Unsafe.WriteUnaligned(p, Unsafe.ReadUnaligned<Vector<double>>(p) + v.As<T, double>());
        }
    }

    /// <summary>m as hi + lo in T (float64: lo = 0); x − m is then formed as (x − hi) − lo.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (T Hi, T Lo) Split<T>(double m) where T : unmanaged
    {
        if (typeof(T) == typeof(float))
        {
            var (hi, lo) = GroupNormMath.SplitMean(m);
            return (FromDouble<T>(hi), FromDouble<T>(lo));
        }
        return (FromDouble<T>(m), default);
    }

    /// <summary>Σ (p[i] − m) and Σ (p[i] − m)², with m = mh + ml split by the caller (<see cref="Split{T}"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static (double Dev, double SqDev) SumDeviations<T>(T* p, long n, T mh, T ml) where T : unmanaged, IFloatingPointIeee754<T>
    {
        double m = ToDouble(mh) + ToDouble(ml);
        long i = 0;
        double s = 0, q = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<T>.Count;
            var vh = new Vector<T>(mh);
            var vl = new Vector<T>(ml);
            Vector<double> ds = default, dq = default;
            while (i <= n - 4 * w)
            {
                long stop = Math.Min(n - 4 * w, i + (FoldTerms - 1) * 4L * w);
                Vector<T> s0 = default, s1 = default, s2 = default, s3 = default;
                Vector<T> q0 = default, q1 = default, q2 = default, q3 = default;
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
                ds += ToDoubleLanes((s0 + s1) + (s2 + s3));
                dq += ToDoubleLanes((q0 + q1) + (q2 + q3));
            }
            // Fewer than four vectors left (at most three terms per lane): short planes such as 7×7 end here.
            Vector<T> st = default, qt = default;
            for (; i <= n - w; i += w)
            {
                var d = (Load(p + i) - vh) - vl;
                st += d;
                qt += d * d;
            }
            ds += ToDoubleLanes(st);
            dq += ToDoubleLanes(qt);
            s = Vector.Sum(ds);
            q = Vector.Sum(dq);
        }
        for (; i < n; i++)
        {
            double d = ToDouble(p[i]) - m;
            s += d;
            q += d * d;
        }
        return (s, q);
    }

    /// <summary>
    /// Σ dy and Σ dy·(x − m): the per-(n, c) sums A and B of the backward pass, with m = mh + ml split by
    /// the caller once per group rather than once per channel plane (on 8×8 planes that split was a tenth
    /// of the backward's time).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static (double A, double B) GradientSums<T>(T* x, T* dy, long n, T mh, T ml) where T : unmanaged, IFloatingPointIeee754<T>
    {
        double m = ToDouble(mh) + ToDouble(ml);
        long i = 0;
        double a = 0, b = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<T>.Count;
            var vh = new Vector<T>(mh);
            var vl = new Vector<T>(ml);
            Vector<double> da = default, db = default;
            while (i <= n - 4 * w)
            {
                long stop = Math.Min(n - 4 * w, i + (FoldTerms - 1) * 4L * w);
                Vector<T> a0 = default, a1 = default, a2 = default, a3 = default;
                Vector<T> b0 = default, b1 = default, b2 = default, b3 = default;
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
                da += ToDoubleLanes((a0 + a1) + (a2 + a3));
                db += ToDoubleLanes((b0 + b1) + (b2 + b3));
            }
            Vector<T> at = default, bt = default;
            for (; i <= n - w; i += w)
            {
                var g = Load(dy + i);
                at += g;
                bt += g * ((Load(x + i) - vh) - vl);
            }
            da += ToDoubleLanes(at);
            db += ToDoubleLanes(bt);
            a = Vector.Sum(da);
            b = Vector.Sum(db);
        }
        for (; i < n; i++)
        {
            double g = ToDouble(dy[i]);
            a += g;
            b += g * (ToDouble(x[i]) - m);
        }
        return (a, b);
    }

    // ---- channels-last piece reductions: `rows` spatial positions × C contiguous channels -------------
    // Each walks one block of channels down all rows of an L1-sized piece, so accumulators stay in
    // registers instead of being reloaded for every position.

    /// <summary>sum[j] += Σ_r x[r·C + j] for every channel j (a coarse first pass: it only picks a shift).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void AccumulateColumns<T>(T* x, long rows, long c, double* sum) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long j = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<T>.Count;
            for (; j <= c - w; j += w)
            {
                Vector<T> a0 = default, a1 = default, a2 = default, a3 = default;
                T* p = x + j;
                long r = 0;
                for (; r + 3 < rows; r += 4)
                {
                    a0 += Load(p + r * c);
                    a1 += Load(p + (r + 1) * c);
                    a2 += Load(p + (r + 2) * c);
                    a3 += Load(p + (r + 3) * c);
                }
                for (; r < rows; r++) a0 += Load(p + r * c);
                AddToDoubles(sum + j, (a0 + a1) + (a2 + a3));
            }
        }
        for (; j < c; j++)
        {
            double acc = 0;
            for (long r = 0; r < rows; r++) acc += ToDouble(x[r * c + j]);
            sum[j] += acc;
        }
    }

    /// <summary>
    /// dev[j] += Σ_r (x − m[j]); sq[j] += Σ_r (x − m[j])² per channel j, with m[j] = mHi[j] + mLo[j].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void AccumulateColumnDeviations<T>(T* x, long rows, long c, T* mHi, T* mLo, double* dev, double* sq)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        long j = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<T>.Count;
            long whole = rows & ~3L;
            for (; j <= c - w; j += w)
            {
                var vh = Load(mHi + j);
                var vl = Load(mLo + j);
                T* p = x + j;
                long r = 0;
                while (r < rows)
                {
                    long r4 = Math.Min(whole, r + 4L * FoldTerms);
                    Vector<T> s0 = default, s1 = default, s2 = default, s3 = default;
                    Vector<T> q0 = default, q1 = default, q2 = default, q3 = default;
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
                    if (r4 == whole)
                    {
                        // The last zero to three rows.
                        for (; r < rows; r++)
                        {
                            var d = (Load(p + r * c) - vh) - vl;
                            s0 += d;
                            q0 += d * d;
                        }
                    }
                    AddToDoubles(dev + j, (s0 + s1) + (s2 + s3));
                    AddToDoubles(sq + j, (q0 + q1) + (q2 + q3));
                }
            }
        }
        for (; j < c; j++)
        {
            double sd = 0, sqd = 0;
            for (long r = 0; r < rows; r++)
            {
                double d = (ToDouble(x[r * c + j]) - ToDouble(mHi[j])) - ToDouble(mLo[j]);
                sd += d;
                sqd += d * d;
            }
            dev[j] += sd;
            sq[j] += sqd;
        }
    }

    /// <summary>
    /// sumA[j] += Σ_r dy; sumB[j] += Σ_r dy·(x − m[j]) per channel j, with m[j] = mHi[j] + mLo[j].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void AccumulateGradientColumns<T>(T* x, T* dy, long rows, long c, T* mHi, T* mLo, double* sumA, double* sumB)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        long j = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<T>.Count;
            long whole = rows & ~3L;
            for (; j <= c - w; j += w)
            {
                var vh = Load(mHi + j);
                var vl = Load(mLo + j);
                T* px = x + j;
                T* pg = dy + j;
                long r = 0;
                while (r < rows)
                {
                    long r4 = Math.Min(whole, r + 4L * FoldTerms);
                    Vector<T> a0 = default, a1 = default, a2 = default, a3 = default;
                    Vector<T> b0 = default, b1 = default, b2 = default, b3 = default;
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
                    if (r4 == whole)
                    {
                        for (; r < rows; r++)
                        {
                            var g = Load(pg + r * c);
                            a0 += g;
                            b0 += g * ((Load(px + r * c) - vh) - vl);
                        }
                    }
                    AddToDoubles(sumA + j, (a0 + a1) + (a2 + a3));
                    AddToDoubles(sumB + j, (b0 + b1) + (b2 + b3));
                }
            }
        }
        for (; j < c; j++)
        {
            double a = 0, b = 0;
            for (long r = 0; r < rows; r++)
            {
                double g = ToDouble(dy[r * c + j]);
                a += g;
                b += g * ((ToDouble(x[r * c + j]) - ToDouble(mHi[j])) - ToDouble(mLo[j]));
            }
            sumA[j] += a;
            sumB[j] += b;
        }
    }
}
