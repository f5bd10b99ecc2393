using System.Numerics;
using System.Runtime.CompilerServices;

namespace GroupNormalization.Kernels;

/// <summary>
/// The innermost loops of the fused CPU kernels (see <see cref="CpuFusedKernel"/> for how they are
/// scheduled and <see cref="GroupNormMath"/> for the formulas).
/// <para>
/// Generic over float and double: the JIT compiles one specialisation per type and removes the
/// <c>typeof(T)</c> branches. The reductions (<c>CpuFusedLoops.Reductions.cs</c>) return float64 sums;
/// element-wise loops (here) run in T with per-channel coefficients prepared in double.
/// </para>
/// <para>
/// Contiguous loops: a span of one channel plane (channels-first). Piece loops: a block of spatial
/// positions of a channels-last tensor, each holding C contiguous channels, with per-channel coefficients.
/// </para>
/// <para>
/// 4K aliasing: an output allocated right after its input often sits a cache line or two past it modulo
/// 4 KiB (equal-sized blocks from one heap, each with the same header and alignment). A load whose address
/// matches an earlier, still pending store in its low 12 bits waits for that store, so a loop that stores
/// y[i] and then loads x[i + 16] stalled on every step: a (32, 32, 16, 16) forward ran at 0.43 ns per
/// element against 0.2 for its neighbours. The element-wise loops therefore load one step ahead of their
/// stores, so that a load never comes after the store it aliases.
/// </para>
/// </summary>
internal static unsafe partial class CpuFusedLoops
{
    // ---- helpers -------------------------------------------------------------------------------

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<T> Load<T>(T* p) where T : unmanaged => Unsafe.ReadUnaligned<Vector<T>>(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store<T>(T* p, Vector<T> v) where T : unmanaged => Unsafe.WriteUnaligned(p, v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double ToDouble<T>(T v) where T : unmanaged =>
        typeof(T) == typeof(float) ? Unsafe.As<T, float>(ref v) : Unsafe.As<T, double>(ref v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static T FromDouble<T>(double v) where T : unmanaged
    {
        if (typeof(T) == typeof(float))
        {
            float f = (float)v;
            return Unsafe.As<float, T>(ref f);
        }
        return Unsafe.As<double, T>(ref v);
    }

    // ---- contiguous ------------------------------------------------------------------------------------

    /// <summary>
    /// Σ p[i] in T's own precision, with no folding: it only picks the shift that the deviation sums
    /// are taken from (<see cref="GroupNormMath.ShiftedMoments"/>), which any value near the mean serves.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static double RoughSum<T>(T* p, long n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long i = 0;
        T s = T.Zero;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<T>.Count;
            Vector<T> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; i <= n - 4 * w; i += 4 * w)
            {
                a0 += Load(p + i);
                a1 += Load(p + i + w);
                a2 += Load(p + i + 2 * w);
                a3 += Load(p + i + 3 * w);
            }
            for (; i <= n - w; i += w) a0 += Load(p + i);
            s = Vector.Sum((a0 + a1) + (a2 + a3));
        }
        for (; i < n; i++) s += p[i];
        return ToDouble(s);
    }

    /// <summary>y = (x − μhi)·scale + shift, where the caller folded −μlo·scale into shift.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Normalize<T>(T* x, T* y, long n, T muHi, T scale, T shift)
        where T : unmanaged, IFloatingPointIeee754<T>
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
                var v0 = Load(x);
                var v1 = Load(x + w);
                for (; i <= n - 4 * w; i += 2 * w)
                {
                    var n0 = Load(x + i + 2 * w);
                    var n1 = Load(x + i + 3 * w);
                    Store(y + i, (v0 - vh) * vs + vb);
                    Store(y + i + w, (v1 - vh) * vs + vb);
                    v0 = n0;
                    v1 = n1;
                }
                Store(y + i, (v0 - vh) * vs + vb);
                Store(y + i + w, (v1 - vh) * vs + vb);
                i += 2 * w;
            }
            for (; i <= n - w; i += w)
                Store(y + i, (Load(x + i) - vh) * vs + vb);
        }
        for (; i < n; i++) y[i] = (x[i] - muHi) * scale + shift;
    }

    /// <summary>dx = a·dy + b·(x − μhi) + k, where the caller folded −b·μlo into k.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void InputGradient<T>(T* x, T* dy, T* dx, long n, T muHi, T a, T b, T k)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        long i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<T>.Count;
            var vh = new Vector<T>(muHi);
            var va = new Vector<T>(a);
            var vb = new Vector<T>(b);
            var vk = new Vector<T>(k);
            if (n >= 2 * w)
            {
                // Loads run one step ahead of the stores (see the class remarks on 4K aliasing).
                var x0 = Load(x);
                var x1 = Load(x + w);
                var g0 = Load(dy);
                var g1 = Load(dy + w);
                for (; i <= n - 4 * w; i += 2 * w)
                {
                    var nx0 = Load(x + i + 2 * w);
                    var nx1 = Load(x + i + 3 * w);
                    var ng0 = Load(dy + i + 2 * w);
                    var ng1 = Load(dy + i + 3 * w);
                    Store(dx + i, va * g0 + (vb * (x0 - vh) + vk));
                    Store(dx + i + w, va * g1 + (vb * (x1 - vh) + vk));
                    (x0, x1, g0, g1) = (nx0, nx1, ng0, ng1);
                }
                Store(dx + i, va * g0 + (vb * (x0 - vh) + vk));
                Store(dx + i + w, va * g1 + (vb * (x1 - vh) + vk));
                i += 2 * w;
            }
            for (; i <= n - w; i += w)
                Store(dx + i, va * Load(dy + i) + (vb * (Load(x + i) - vh) + vk));
        }
        for (; i < n; i++) dx[i] = a * dy[i] + (b * (x[i] - muHi) + k);
    }

    // ---- channels-last element-wise loops: `rows` spatial positions × C contiguous channels ----------

    /// <summary>y = (x − μhi[j])·scale[j] + shift[j] for every row and channel j (μlo folded into shift).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void NormalizeColumns<T>(T* x, T* y, long rows, long c, T* muHi, T* scale, T* shift)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        // Row by row: x and y stream sequentially, and the coefficient rows stay in L1.
        int w = Vector.IsHardwareAccelerated ? Vector<T>.Count : int.MaxValue;
        for (long r = 0; r < rows; r++)
        {
            T* xr = x + r * c, yr = y + r * c;
            long j = 0;
            for (; j <= c - w; j += w)
                Store(yr + j, (Load(xr + j) - Load(muHi + j)) * Load(scale + j) + Load(shift + j));
            for (; j < c; j++)
                yr[j] = (xr[j] - muHi[j]) * scale[j] + shift[j];
        }
    }

    /// <summary>dx = a[j]·dy + b[j]·(x − μhi[j]) + k[j] for every row and channel j (μlo folded into k).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void InputGradientColumns<T>(T* x, T* dy, T* dx, long rows, long c, T* muHi, T* a, T* b, T* k)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int w = Vector.IsHardwareAccelerated ? Vector<T>.Count : int.MaxValue;
        for (long r = 0; r < rows; r++)
        {
            T* xr = x + r * c, gr = dy + r * c, dr = dx + r * c;
            long j = 0;
            for (; j <= c - w; j += w)
                Store(dr + j, Load(a + j) * Load(gr + j) + (Load(b + j) * (Load(xr + j) - Load(muHi + j)) + Load(k + j)));
            for (; j < c; j++)
                dr[j] = a[j] * gr[j] + (b[j] * (xr[j] - muHi[j]) + k[j]);
        }
    }
}
