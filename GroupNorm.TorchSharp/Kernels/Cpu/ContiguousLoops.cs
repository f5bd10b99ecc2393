using System.Numerics;
using System.Runtime.CompilerServices;
using static GroupNormalization.Kernels.Cpu.VectorMath;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>
/// The innermost element-wise loops over one contiguous span (a channel plane, or part of one, of a
/// channels-first tensor), with that channel's coefficients as scalars; the two-term reductions are in
/// <see cref="Reductions"/>. TE reads and writes the stored type TS, and the arithmetic runs in T; TA is
/// the fused activation and TR says whether a residual r (same layout as x) joins its input. Coefficients are prepared in float64 by <see cref="GroupNormMath"/>.
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

    /// <summary>y = act((x − μhi)·scale + shift + r), where the caller folded −μlo·scale into shift.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Normalize<TE, TS, T, TA, TR>(TS* x, TS* r, TS* y, long n, T muHi, T scale, T shift)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
        where TA : struct, IActivation where TR : struct, IResidual
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
                var v0 = PreActivationOf<TE, TS, T, TR>(x, r, 0, vh, vs, vb);
                var v1 = PreActivationOf<TE, TS, T, TR>(x, r, w, vh, vs, vb);
                for (; i <= n - 4 * w; i += 2 * w)
                {
                    var n0 = PreActivationOf<TE, TS, T, TR>(x, r, i + 2 * w, vh, vs, vb);
                    var n1 = PreActivationOf<TE, TS, T, TR>(x, r, i + 3 * w, vh, vs, vb);
                    StorePair(y + i, v0, v1);
                    v0 = n0;
                    v1 = n1;
                }
                StorePair(y + i, v0, v1);
                i += 2 * w;
            }
            for (; i <= n - w; i += w)
                TE.Store(y + i, TA.Apply(PreActivationOf<TE, TS, T, TR>(x, r, i, vh, vs, vb)));
            if (VectorTail<TS, T, TA>() && i < n && n >= w)
            {
                TE.Store(y + n - w, TA.Apply(PreActivationOf<TE, TS, T, TR>(x, r, n - w, vh, vs, vb)));
                i = n;
            }
        }
        for (; i < n; i++) y[i] = TE.Narrow(TA.Apply(ResidualTerm.Add<TE, TS, T, TR>((TE.Widen(x[i]) - muHi) * scale + shift, r, i)));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static void StorePair(TS* p, Vector<T> z0, Vector<T> z1)
        {
            TA.Apply(ref z0, ref z1);
            TE.StorePair(p, z0, z1);
        }
    }

    /// <summary>
    /// <see cref="Normalize"/> over consecutive channel planes of <paramref name="planeLength"/> elements, a
    /// multiple of two vectors, with per-plane constants: one loop for a whole row of small planes. An
    /// activation's exponential is a long dependency chain; in a call per 8×8 plane (four vector pairs) the
    /// core could not overlap one pair's chain with the next plane's, and GroupNorm+SiLU ran at 2.6× the
    /// per-element cost of large planes. Without an activation the call's setup per plane was the cost.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void NormalizePlanes<TE, TS, T, TA, TR>(TS* x, TS* r, TS* y, long planes, long planeLength, T muHi, T* scale, T* shift)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
        where TA : struct, IActivation where TR : struct, IResidual
    {
        int w = Vector<T>.Count;
        var vh = new Vector<T>(muHi);
        for (long p = 0; p < planes; p++)
        {
            var vs = new Vector<T>(scale[p]);
            var vb = new Vector<T>(shift[p]);
            TS* xp = x + p * planeLength, yp = y + p * planeLength, rp = r + p * planeLength;
            for (long i = 0; i < planeLength; i += 2 * w)
            {
                var z0 = PreActivationOf<TE, TS, T, TR>(xp, rp, i, vh, vs, vb);
                var z1 = PreActivationOf<TE, TS, T, TR>(xp, rp, i + w, vh, vs, vb);
                TA.Apply(ref z0, ref z1);
                TE.StorePair(yp + i, z0, z1);
            }
        }
    }

    /// <summary>
    /// dx = a·dz + b·(x − μhi) + k, where the caller folded −b·μlo into k, and dz = dy·act′(z + r) with z
    /// rebuilt from a = scale and shift as forward formed it.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void InputGradient<TE, TS, T, TA, TR>(TS* x, TS* r, TS* dy, TS* dx, long n, T muHi, T a, T b, T k, T shift)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
        where TA : struct, IActivation where TR : struct, IResidual
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
                    TE.StorePair(dx + i, InputGradientOf<T, TA>(x0, g0, vh, va, vb, vk, Shift<TE, TS, T, TA, TR>(vs, r, i)), InputGradientOf<T, TA>(x1, g1, vh, va, vb, vk, Shift<TE, TS, T, TA, TR>(vs, r, i + w)));
                    (x0, x1, g0, g1) = (nx0, nx1, ng0, ng1);
                }
                TE.StorePair(dx + i, InputGradientOf<T, TA>(x0, g0, vh, va, vb, vk, Shift<TE, TS, T, TA, TR>(vs, r, i)), InputGradientOf<T, TA>(x1, g1, vh, va, vb, vk, Shift<TE, TS, T, TA, TR>(vs, r, i + w)));
                i += 2 * w;
            }
            for (; i <= n - w; i += w)
                TE.Store(dx + i, InputGradientOf<T, TA>(TE.Load(x + i), TE.Load(dy + i), vh, va, vb, vk, Shift<TE, TS, T, TA, TR>(vs, r, i)));
            if (VectorTail<TS, T, TA>() && i < n && n >= w && dx != dy)
            {
                TE.Store(dx + n - w, InputGradientOf<T, TA>(TE.Load(x + n - w), TE.Load(dy + n - w), vh, va, vb, vk, Shift<TE, TS, T, TA, TR>(vs, r, n - w)));
                i = n;
            }
        }
        for (; i < n; i++)
        {
            T c = TE.Widen(x[i]) - muHi;
            T g = TE.Widen(dy[i]);
            if (!TA.IsIdentity) g = TA.Gradient(g, ResidualTerm.Add<TE, TS, T, TR>(c * a + shift, r, i));
            dx[i] = TE.Narrow(a * g + (b * c + k));
        }
    }

    /// <summary>
    /// <see cref="InputGradient"/> over consecutive channel planes of <paramref name="planeLength"/> elements, a
    /// multiple of two vectors, with per-plane a and shift: one loop for a whole row of small planes (see
    /// <see cref="NormalizePlanes"/>). A call per 8×8 plane spent as long setting up as computing.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void InputGradientPlanes<TE, TS, T, TA, TR>(TS* x, TS* r, TS* dy, TS* dx, long planes, long planeLength, T muHi, T* a, T b, T k, T* shift)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
        where TA : struct, IActivation where TR : struct, IResidual
    {
        int w = Vector<T>.Count;
        var vh = new Vector<T>(muHi);
        var vb = new Vector<T>(b);
        var vk = new Vector<T>(k);
        for (long p = 0, i = 0; p < planes; p++)
        {
            var va = new Vector<T>(a[p]);
            var vs = TA.IsIdentity ? default : new Vector<T>(shift[p]);
            for (long stop = i + planeLength; i < stop; i += 2 * w)
            {
                var d0 = InputGradientOf<T, TA>(TE.Load(x + i), TE.Load(dy + i), vh, va, vb, vk, Shift<TE, TS, T, TA, TR>(vs, r, i));
                var d1 = InputGradientOf<T, TA>(TE.Load(x + i + w), TE.Load(dy + i + w), vh, va, vb, vk, Shift<TE, TS, T, TA, TR>(vs, r, i + w));
                TE.StorePair(dx + i, d0, d1);
            }
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

    /// <summary>One vector of z = (x[at] − μhi)·scale + shift + r[at]; shared with the channels-last loop.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector<T> PreActivationOf<TE, TS, T, TR>(TS* x, TS* r, long at, Vector<T> muHi, Vector<T> scale, Vector<T> shift)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
        where TR : struct, IResidual =>
        ResidualTerm.Add<TE, TS, T, TR>((TE.Load(x + at) - muHi) * scale + shift, r, at);

    /// <summary>
    /// The pre-activation's shift for one vector of <see cref="InputGradientOf"/>: the residual joins it
    /// element by element. Only an activation reads it.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector<T> Shift<TE, TS, T, TA, TR>(Vector<T> shift, TS* r, long at)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
        where TA : struct, IActivation where TR : struct, IResidual =>
        TA.IsIdentity ? shift : ResidualTerm.Add<TE, TS, T, TR>(shift, r, at);

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
