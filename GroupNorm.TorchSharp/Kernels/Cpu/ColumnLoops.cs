using System.Numerics;
using System.Runtime.CompilerServices;
using static GroupNormalization.Kernels.Cpu.VectorMath;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>
/// The innermost loops over a piece of a channels-last tensor: <c>rows</c> spatial positions, each holding C
/// contiguous channels, with per-channel coefficient arrays of C entries. Type parameters as in
/// <see cref="ContiguousLoops"/>; the two-term reductions are in <see cref="Reductions"/>. The element-wise
/// loops go row by row, so that x and y stream sequentially while the coefficient rows stay in L1.
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

    /// <summary>y = act((x − μhi[j])·scale[j] + shift[j] + r) for every row and channel j (μlo folded into shift).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Normalize<TE, TS, T, TA, TR>(TS* x, TS* residual, TS* y, long rows, long c, T* muHi, T* scale, T* shift)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
        where TA : struct, IActivation where TR : struct, IResidual
    {
        int w = Vector.IsHardwareAccelerated ? Vector<T>.Count : int.MaxValue;
        for (long r = 0; r < rows; r++)
        {
            TS* xr = x + r * c, yr = y + r * c, rr = residual + r * c;
            long j = 0;
            if (!TA.IsIdentity && Vector.IsHardwareAccelerated)
            {
                // Channels in pairs of vectors, for activations that evaluate a pair as one wider vector.
                for (; j <= c - 2L * w; j += 2 * w)
                {
                    var z0 = ContiguousLoops.PreActivationOf<TE, TS, T, TR>(xr, rr, j, Load(muHi + j), Load(scale + j), Load(shift + j));
                    var z1 = ContiguousLoops.PreActivationOf<TE, TS, T, TR>(xr, rr, j + w, Load(muHi + j + w), Load(scale + j + w), Load(shift + j + w));
                    TA.Apply(ref z0, ref z1);
                    TE.Store(yr + j, z0);
                    TE.Store(yr + j + w, z1);
                }
            }
            for (; j <= c - w; j += w)
                TE.Store(yr + j, TA.Apply(ContiguousLoops.PreActivationOf<TE, TS, T, TR>(xr, rr, j, Load(muHi + j), Load(scale + j), Load(shift + j))));
            for (; j < c; j++)
                yr[j] = TE.Narrow(TA.Apply(ResidualTerm.Add<TE, TS, T, TR>((TE.Widen(xr[j]) - muHi[j]) * scale[j] + shift[j], rr, j)));
        }
    }

    /// <summary>dx = a[j]·dz + b[j]·(x − μhi[j]) + k[j] for every row and channel j (μlo folded into k; dz as in <see cref="GradientTerms{TE, TS, T, TA, TR}"/>, with scale = a).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void InputGradient<TE, TS, T, TA, TR>(TS* x, TS* residual, TS* dy, TS* dx, long rows, long c, T* muHi, T* a, T* b, T* k, T* shift)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
        where TA : struct, IActivation where TR : struct, IResidual
    {
        int w = Vector.IsHardwareAccelerated ? Vector<T>.Count : int.MaxValue;
        for (long r = 0; r < rows; r++)
        {
            TS* xr = x + r * c, gr = dy + r * c, dr = dx + r * c, rr = residual + r * c;
            long j = 0;
            for (; j <= c - w; j += w)
            {
                var vs = TA.IsIdentity ? default : ContiguousLoops.Shift<TE, TS, T, TA, TR>(Load(shift + j), rr, j);
                TE.Store(dr + j, ContiguousLoops.InputGradientOf<T, TA>(TE.Load(xr + j), TE.Load(gr + j), Load(muHi + j), Load(a + j), Load(b + j), Load(k + j), vs));
            }
            for (; j < c; j++)
            {
                T cr = TE.Widen(xr[j]) - muHi[j];
                T g = TE.Widen(gr[j]);
                if (!TA.IsIdentity) g = TA.Gradient(g, ResidualTerm.Add<TE, TS, T, TR>(cr * a[j] + shift[j], rr, j));
                dr[j] = TE.Narrow(a[j] * g + (b[j] * cr + k[j]));
            }
        }
    }
}
