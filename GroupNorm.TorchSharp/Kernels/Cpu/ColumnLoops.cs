using System;
using System.Numerics;
using System.Runtime.CompilerServices;
using static GroupNormalization.Kernels.Cpu.VectorMath;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>
/// The innermost loops over a piece of a channels-last tensor: <c>rows</c> spatial positions, each holding C
/// contiguous channels, with per-channel coefficient arrays of C entries. Type parameters as in
/// <see cref="ContiguousLoops"/>. The reductions walk one vector of channels down all rows of an L1-sized
/// piece, so that their accumulators stay in registers; the element-wise loops go row by row, so that x
/// and y stream sequentially while the coefficient rows stay in L1.
/// </summary>
internal static unsafe class ColumnLoops
{
    /// <summary>sum[j] += Σ_r x[r·C + j] for every channel j (a coarse first pass: it only picks a shift).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void AccumulateColumns<TE, TS, T>(TS* x, long rows, long c, double* sum)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
    {
        long j = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<T>.Count;
            for (; j <= c - w; j += w)
            {
                Vector<T> a0 = default, a1 = default, a2 = default, a3 = default;
                TS* p = x + j;
                long r = 0;
                for (; r + 3 < rows; r += 4)
                {
                    a0 += TE.Load(p + r * c);
                    a1 += TE.Load(p + (r + 1) * c);
                    a2 += TE.Load(p + (r + 2) * c);
                    a3 += TE.Load(p + (r + 3) * c);
                }
                for (; r < rows; r++) a0 += TE.Load(p + r * c);
                AddToDoubles(sum + j, (a0 + a1) + (a2 + a3));
            }
        }
        for (; j < c; j++)
        {
            double acc = 0;
            for (long r = 0; r < rows; r++) acc += ToDouble(TE.Widen(x[r * c + j]));
            sum[j] += acc;
        }
    }

    /// <summary>dev[j] += Σ_r (x − m[j]); sq[j] += Σ_r (x − m[j])² per channel j, with m[j] = mHi[j] + mLo[j].</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void AccumulateDeviations<TE, TS, T>(TS* x, long rows, long c, T* mHi, T* mLo, double* dev, double* sq)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
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
                TS* p = x + j;
                long r = 0;
                while (r < rows)
                {
                    long r4 = Math.Min(whole, r + 4L * FoldTerms);
                    Vector<T> s0 = default, s1 = default, s2 = default, s3 = default;
                    Vector<T> q0 = default, q1 = default, q2 = default, q3 = default;
                    for (; r < r4; r += 4)
                    {
                        var d0 = (TE.Load(p + r * c) - vh) - vl;
                        var d1 = (TE.Load(p + (r + 1) * c) - vh) - vl;
                        var d2 = (TE.Load(p + (r + 2) * c) - vh) - vl;
                        var d3 = (TE.Load(p + (r + 3) * c) - vh) - vl;
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
                            var d = (TE.Load(p + r * c) - vh) - vl;
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
                double d = ToDouble((TE.Widen(x[r * c + j]) - mHi[j]) - mLo[j]);
                sd += d;
                sqd += d * d;
            }
            dev[j] += sd;
            sq[j] += sqd;
        }
    }

    /// <summary>
    /// sumA[j] += Σ_r dz; sumB[j] += Σ_r dz·(x − m[j]) per channel j, with m[j] = mHi[j] + mLo[j] and
    /// dz = dy·act′((x − mHi[j])·scale[j] + shift[j]); scale and shift are not read without an activation.
    /// When <paramref name="dz"/> is not null, dz is also written there (see <see cref="GradientStash"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void AccumulateGradientSums<TE, TS, T, TA>(TS* x, TS* dy, TS* dz, long rows, long c, T* mHi, T* mLo, T* scale, T* shift, double* sumA, double* sumB)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
        where TA : struct, IActivation
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
                var vs = TA.IsIdentity ? default : Load(scale + j);
                var vb = TA.IsIdentity ? default : Load(shift + j);
                TS* px = x + j;
                TS* pg = dy + j;
                TS* pz = dz + j;
                long r = 0;
                while (r < rows)
                {
                    long r4 = Math.Min(whole, r + 4L * FoldTerms);
                    Vector<T> a0 = default, a1 = default, a2 = default, a3 = default;
                    Vector<T> b0 = default, b1 = default, b2 = default, b3 = default;
                    for (; r < r4; r += 4)
                    {
                        var c0 = TE.Load(px + r * c) - vh;
                        var c1 = TE.Load(px + (r + 1) * c) - vh;
                        var c2 = TE.Load(px + (r + 2) * c) - vh;
                        var c3 = TE.Load(px + (r + 3) * c) - vh;
                        var g0 = TE.Load(pg + r * c);
                        var g1 = TE.Load(pg + (r + 1) * c);
                        var g2 = TE.Load(pg + (r + 2) * c);
                        var g3 = TE.Load(pg + (r + 3) * c);
                        if (!TA.IsIdentity)
                        {
                            TA.Gradient(ref g0, ref g1, c0 * vs + vb, c1 * vs + vb);
                            TA.Gradient(ref g2, ref g3, c2 * vs + vb, c3 * vs + vb);
                            if (dz != null)
                            {
                                TE.Store(pz + r * c, g0);
                                TE.Store(pz + (r + 1) * c, g1);
                                TE.Store(pz + (r + 2) * c, g2);
                                TE.Store(pz + (r + 3) * c, g3);
                            }
                        }
                        a0 += g0;
                        a1 += g1;
                        a2 += g2;
                        a3 += g3;
                        b0 += g0 * (c0 - vl);
                        b1 += g1 * (c1 - vl);
                        b2 += g2 * (c2 - vl);
                        b3 += g3 * (c3 - vl);
                    }
                    if (r4 == whole)
                    {
                        for (; r < rows; r++)
                        {
                            var cr = TE.Load(px + r * c) - vh;
                            var g = TE.Load(pg + r * c);
                            if (!TA.IsIdentity)
                            {
                                g = TA.Gradient(g, cr * vs + vb);
                                if (dz != null) TE.Store(pz + r * c, g);
                            }
                            a0 += g;
                            b0 += g * (cr - vl);
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
                T cr = TE.Widen(x[r * c + j]) - mHi[j];
                T g = TE.Widen(dy[r * c + j]);
                if (!TA.IsIdentity)
                {
                    g = TA.Gradient(g, cr * scale[j] + shift[j]);
                    if (dz != null) dz[r * c + j] = TE.Narrow(g);
                }
                a += ToDouble(g);
                b += ToDouble(g) * ToDouble(cr - mLo[j]);
            }
            sumA[j] += a;
            sumB[j] += b;
        }
    }

    /// <summary>y = act((x − μhi[j])·scale[j] + shift[j]) for every row and channel j (μlo folded into shift).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Normalize<TE, TS, T, TA>(TS* x, TS* y, long rows, long c, T* muHi, T* scale, T* shift)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
        where TA : struct, IActivation
    {
        int w = Vector.IsHardwareAccelerated ? Vector<T>.Count : int.MaxValue;
        for (long r = 0; r < rows; r++)
        {
            TS* xr = x + r * c, yr = y + r * c;
            long j = 0;
            if (!TA.IsIdentity && Vector.IsHardwareAccelerated)
            {
                // Channels in pairs of vectors, for activations that evaluate a pair as one wider vector.
                for (; j <= c - 2L * w; j += 2 * w)
                {
                    var z0 = (TE.Load(xr + j) - Load(muHi + j)) * Load(scale + j) + Load(shift + j);
                    var z1 = (TE.Load(xr + j + w) - Load(muHi + j + w)) * Load(scale + j + w) + Load(shift + j + w);
                    TA.Apply(ref z0, ref z1);
                    TE.Store(yr + j, z0);
                    TE.Store(yr + j + w, z1);
                }
            }
            for (; j <= c - w; j += w)
                TE.Store(yr + j, TA.Apply((TE.Load(xr + j) - Load(muHi + j)) * Load(scale + j) + Load(shift + j)));
            for (; j < c; j++)
                yr[j] = TE.Narrow(TA.Apply((TE.Widen(xr[j]) - muHi[j]) * scale[j] + shift[j]));
        }
    }

    /// <summary>dx = a[j]·dz + b[j]·(x − μhi[j]) + k[j] for every row and channel j (μlo folded into k; dz as in <see cref="AccumulateGradientSums"/>, with scale = a).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void InputGradient<TE, TS, T, TA>(TS* x, TS* dy, TS* dx, long rows, long c, T* muHi, T* a, T* b, T* k, T* shift)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
        where TA : struct, IActivation
    {
        int w = Vector.IsHardwareAccelerated ? Vector<T>.Count : int.MaxValue;
        for (long r = 0; r < rows; r++)
        {
            TS* xr = x + r * c, gr = dy + r * c, dr = dx + r * c;
            long j = 0;
            for (; j <= c - w; j += w)
            {
                var vs = TA.IsIdentity ? default : Load(shift + j);
                TE.Store(dr + j, ContiguousLoops.InputGradientOf<T, TA>(TE.Load(xr + j), TE.Load(gr + j), Load(muHi + j), Load(a + j), Load(b + j), Load(k + j), vs));
            }
            for (; j < c; j++)
            {
                T cr = TE.Widen(xr[j]) - muHi[j];
                T g = TE.Widen(gr[j]);
                if (!TA.IsIdentity) g = TA.Gradient(g, cr * a[j] + shift[j]);
                dr[j] = TE.Narrow(a[j] * g + (b[j] * cr + k[j]));
            }
        }
    }
}
