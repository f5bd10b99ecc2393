using System;
using System.Numerics;
using System.Runtime.CompilerServices;
using static GroupNormalization.Kernels.Cpu.VectorMath;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>
/// The innermost loops over one contiguous span (a channel plane, or part of one, of a channels-first
/// tensor), with that channel's coefficients as scalars. TE reads and writes the stored type TS, and the
/// arithmetic runs in T; TA is the fused activation. Reductions return float64 sums (see
/// <see cref="VectorMath"/>); element-wise loops run in T with coefficients prepared in float64 by
/// <see cref="GroupNormMath"/>.
/// <para>
/// 4K aliasing: an output allocated right after its input often sits a cache line or two past it modulo
/// 4 KiB (equal-sized blocks from one heap, each with the same header and alignment). A load whose address
/// matches an earlier, still pending store in its low 12 bits waits for that store, so a loop that stores
/// y[i] and then loads x[i + 16] stalled on every step: a (32, 32, 16, 16) forward ran at 0.43 ns per
/// element against 0.2 for its neighbours. The element-wise loops therefore load one step ahead of their
/// stores, so that a load never comes after the store it aliases.
/// </para>
/// </summary>
internal static unsafe class ContiguousLoops
{
    /// <summary>
    /// Σ p[i] in T's own precision, with no folding: it only picks the shift that the deviation sums
    /// are taken from (<see cref="GroupNormMath.ShiftedMoments"/>), which any value near the mean serves.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static double RoughSum<TE, TS, T>(TS* p, long n)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
    {
        long i = 0;
        T s = T.Zero;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<T>.Count;
            Vector<T> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; i <= n - 4 * w; i += 4 * w)
            {
                a0 += TE.Load(p + i);
                a1 += TE.Load(p + i + w);
                a2 += TE.Load(p + i + 2 * w);
                a3 += TE.Load(p + i + 3 * w);
            }
            for (; i <= n - w; i += w) a0 += TE.Load(p + i);
            s = Vector.Sum((a0 + a1) + (a2 + a3));
        }
        for (; i < n; i++) s += TE.Widen(p[i]);
        return ToDouble(s);
    }

    /// <summary>Σ (p[i] − m) and Σ (p[i] − m)², with m = mh + ml split by the caller.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static (double Dev, double SqDev) SumDeviations<TE, TS, T>(TS* p, long n, T mh, T ml)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
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
                    var d0 = (TE.Load(p + i) - vh) - vl;
                    var d1 = (TE.Load(p + i + w) - vh) - vl;
                    var d2 = (TE.Load(p + i + 2 * w) - vh) - vl;
                    var d3 = (TE.Load(p + i + 3 * w) - vh) - vl;
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
                var d = (TE.Load(p + i) - vh) - vl;
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
            double d = ToDouble(TE.Widen(p[i])) - m;
            s += d;
            q += d * d;
        }
        return (s, q);
    }

    /// <summary>
    /// Σ dz and Σ dz·(x − m): the per-(n, c) sums A and B of the backward pass, with m = mh + ml split by the
    /// caller once per group. dz = dy·act′(z) with z = (x − mh)·scale + shift rebuilt exactly as forward
    /// formed it; scale and shift are unused without an activation. When <paramref name="dz"/> is not null,
    /// dz is also written there (see <see cref="GradientStash"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static (double A, double B) GradientSums<TE, TS, T, TA>(TS* x, TS* dy, TS* dz, long n, T mh, T ml, T scale, T shift)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
        where TA : struct, IActivation
    {
        double m = ToDouble(mh) + ToDouble(ml);
        long i = 0;
        double a = 0, b = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<T>.Count;
            var vh = new Vector<T>(mh);
            var vl = new Vector<T>(ml);
            var vs = new Vector<T>(scale);
            var vb = new Vector<T>(shift);
            Vector<double> da = default, db = default;
            while (i <= n - 4 * w)
            {
                long stop = Math.Min(n - 4 * w, i + (FoldTerms - 1) * 4L * w);
                Vector<T> a0 = default, a1 = default, a2 = default, a3 = default;
                Vector<T> b0 = default, b1 = default, b2 = default, b3 = default;
                for (; i <= stop; i += 4 * w)
                {
                    var c0 = TE.Load(x + i) - vh;
                    var c1 = TE.Load(x + i + w) - vh;
                    var c2 = TE.Load(x + i + 2 * w) - vh;
                    var c3 = TE.Load(x + i + 3 * w) - vh;
                    var g0 = TE.Load(dy + i);
                    var g1 = TE.Load(dy + i + w);
                    var g2 = TE.Load(dy + i + 2 * w);
                    var g3 = TE.Load(dy + i + 3 * w);
                    if (!TA.IsIdentity)
                    {
                        TA.Gradient(ref g0, ref g1, c0 * vs + vb, c1 * vs + vb);
                        TA.Gradient(ref g2, ref g3, c2 * vs + vb, c3 * vs + vb);
                        if (dz != null)
                        {
                            TE.Store(dz + i, g0);
                            TE.Store(dz + i + w, g1);
                            TE.Store(dz + i + 2 * w, g2);
                            TE.Store(dz + i + 3 * w, g3);
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
                da += ToDoubleLanes((a0 + a1) + (a2 + a3));
                db += ToDoubleLanes((b0 + b1) + (b2 + b3));
            }
            Vector<T> at = default, bt = default;
            for (; i <= n - w; i += w)
            {
                var c = TE.Load(x + i) - vh;
                var g = TE.Load(dy + i);
                if (!TA.IsIdentity)
                {
                    g = TA.Gradient(g, c * vs + vb);
                    if (dz != null) TE.Store(dz + i, g);
                }
                at += g;
                bt += g * (c - vl);
            }
            if (!TA.IsIdentity && i < n && n >= w)
            {
                // The last vector of the span again, its already counted lanes masked out (see VectorTail);
                // dz is rewritten with the same values there.
                long j = n - w;
                var c = TE.Load(x + j) - vh;
                var g = TA.Gradient(TE.Load(dy + j), c * vs + vb);
                if (dz != null) TE.Store(dz + j, g);
                g = Vector.ConditionalSelect(Vector.GreaterThanOrEqual(Vector<T>.Indices, new Vector<T>(T.CreateTruncating(i - j))), g, Vector<T>.Zero);
                at += g;
                bt += g * (c - vl);
                i = n;
            }
            da += ToDoubleLanes(at);
            db += ToDoubleLanes(bt);
            a = Vector.Sum(da);
            b = Vector.Sum(db);
        }
        for (; i < n; i++)
        {
            T xi = TE.Widen(x[i]);
            T gi = TE.Widen(dy[i]);
            if (!TA.IsIdentity)
            {
                gi = TA.Gradient(gi, (xi - mh) * scale + shift);
                if (dz != null) dz[i] = TE.Narrow(gi);
            }
            double g = ToDouble(gi);
            a += g;
            b += g * (ToDouble(xi) - m);
        }
        return (a, b);
    }

    /// <summary>y = act((x − μhi)·scale + shift), where the caller folded −μlo·scale into shift.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Normalize<TE, TS, T, TA>(TS* x, TS* y, long n, T muHi, T scale, T shift)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
        where TA : struct, IActivation
    {
        long i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<T>.Count;
            var vh = new Vector<T>(muHi);
            var vs = new Vector<T>(scale);
            var vb = new Vector<T>(shift);
            if (n >= 2 * w)
            {
                // Loads run one step ahead of the stores (see the class remarks on 4K aliasing).
                var v0 = TE.Load(x);
                var v1 = TE.Load(x + w);
                for (; i <= n - 4 * w; i += 2 * w)
                {
                    var n0 = TE.Load(x + i + 2 * w);
                    var n1 = TE.Load(x + i + 3 * w);
                    StorePair(y + i, (v0 - vh) * vs + vb, (v1 - vh) * vs + vb);
                    v0 = n0;
                    v1 = n1;
                }
                StorePair(y + i, (v0 - vh) * vs + vb, (v1 - vh) * vs + vb);
                i += 2 * w;
            }
            for (; i <= n - w; i += w)
                TE.Store(y + i, TA.Apply((TE.Load(x + i) - vh) * vs + vb));
            if (VectorTail<TS, T, TA>() && i < n && n >= w)
            {
                TE.Store(y + n - w, TA.Apply((TE.Load(x + n - w) - vh) * vs + vb));
                i = n;
            }
        }
        for (; i < n; i++) y[i] = TE.Narrow(TA.Apply((TE.Widen(x[i]) - muHi) * scale + shift));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static void StorePair(TS* p, Vector<T> z0, Vector<T> z1)
        {
            TA.Apply(ref z0, ref z1);
            TE.StorePair(p, z0, z1);
        }
    }

    /// <summary>
    /// dx = a·dz + b·(x − μhi) + k, where the caller folded −b·μlo into k, and dz = dy·act′(z) with z rebuilt
    /// from a = scale and shift as forward formed it.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void InputGradient<TE, TS, T, TA>(TS* x, TS* dy, TS* dx, long n, T muHi, T a, T b, T k, T shift)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
        where TA : struct, IActivation
    {
        long i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<T>.Count;
            var vh = new Vector<T>(muHi);
            var va = new Vector<T>(a);
            var vb = new Vector<T>(b);
            var vk = new Vector<T>(k);
            var vs = new Vector<T>(shift);
            if (n >= 2 * w)
            {
                // Loads run one step ahead of the stores (see the class remarks on 4K aliasing).
                var x0 = TE.Load(x);
                var x1 = TE.Load(x + w);
                var g0 = TE.Load(dy);
                var g1 = TE.Load(dy + w);
                for (; i <= n - 4 * w; i += 2 * w)
                {
                    var nx0 = TE.Load(x + i + 2 * w);
                    var nx1 = TE.Load(x + i + 3 * w);
                    var ng0 = TE.Load(dy + i + 2 * w);
                    var ng1 = TE.Load(dy + i + 3 * w);
                    TE.StorePair(dx + i, InputGradientOf<T, TA>(x0, g0, vh, va, vb, vk, vs), InputGradientOf<T, TA>(x1, g1, vh, va, vb, vk, vs));
                    (x0, x1, g0, g1) = (nx0, nx1, ng0, ng1);
                }
                TE.StorePair(dx + i, InputGradientOf<T, TA>(x0, g0, vh, va, vb, vk, vs), InputGradientOf<T, TA>(x1, g1, vh, va, vb, vk, vs));
                i += 2 * w;
            }
            for (; i <= n - w; i += w)
                TE.Store(dx + i, InputGradientOf<T, TA>(TE.Load(x + i), TE.Load(dy + i), vh, va, vb, vk, vs));
            if (VectorTail<TS, T, TA>() && i < n && n >= w && dx != dy)
            {
                TE.Store(dx + n - w, InputGradientOf<T, TA>(TE.Load(x + n - w), TE.Load(dy + n - w), vh, va, vb, vk, vs));
                i = n;
            }
        }
        for (; i < n; i++)
        {
            T c = TE.Widen(x[i]) - muHi;
            T g = TE.Widen(dy[i]);
            if (!TA.IsIdentity) g = TA.Gradient(g, c * a + shift);
            dx[i] = TE.Narrow(a * g + (b * c + k));
        }
    }

    /// <summary>
    /// Whether a loop ends a span whose length is not a multiple of the vector width by computing its last
    /// full vector again (outputs are rewritten with the same values; reductions mask the lanes already
    /// counted) rather than element by element: with an activation, whose scalar exponential costs as much
    /// as a whole vector's. With 7×7 channel planes (49 elements: six vectors and one left over) the scalar
    /// tail made a fused GroupNorm+SiLU forward 2.4× slower than the unfused pair. Not for an in-place
    /// dx (dy = dx), whose last vector has already been overwritten.
    /// </summary>
    private static bool VectorTail<TS, T, TA>() where TA : struct, IActivation => !TA.IsIdentity;

    /// <summary>One vector of dx = a·dz + b·(x − μhi) + k; shared with the channels-last loop.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector<T> InputGradientOf<T, TA>(Vector<T> x, Vector<T> dy, Vector<T> muHi, Vector<T> a, Vector<T> b, Vector<T> k, Vector<T> shift)
        where T : unmanaged, IFloatingPointIeee754<T> where TA : struct, IActivation
    {
        var c = x - muHi;
        if (!TA.IsIdentity) dy = TA.Gradient(dy, c * a + shift);
        return a * dy + (b * c + k);
    }
}
