using System.Numerics;
using System.Runtime.CompilerServices;

namespace GroupNormalization.Kernels;

/// <summary>
/// The innermost loops of the fused CPU kernels (see <see cref="CpuFusedKernel"/> for how they are
/// scheduled and <see cref="GroupNormMath"/> for the formulas).
/// <para>
/// Generic over float and double: the JIT compiles one specialisation per type and removes the
/// <c>typeof(T)</c> branches. Every reduction returns float64 sums: float32 data take the float32
/// loops of <c>CpuFusedLoops.Single.cs</c>, which fold their accumulators into float64 every few terms,
/// so sums over hundreds of thousands of elements keep float32 results exact to rounding.
/// Element-wise loops run in T with per-channel coefficients prepared in double.
/// </para>
/// <para>
/// Contiguous loops: a span of one channel plane (channels-first). Piece loops: a block of spatial
/// positions of a channels-last tensor, each holding C contiguous channels, with per-channel coefficients.
/// </para>
/// </summary>
internal static unsafe partial class CpuFusedLoops
{
    // ---- helpers -------------------------------------------------------------------------------

    /// <summary>Elements per widened block: one Vector&lt;float&gt;, or two Vector&lt;double&gt;.</summary>
    private static int BlockWidth
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Vector<double>.Count * 2;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void LoadWide<T>(T* p, out Vector<double> lo, out Vector<double> hi) where T : unmanaged
    {
        if (typeof(T) == typeof(float))
        {
            Vector.Widen(Unsafe.ReadUnaligned<Vector<float>>(p), out lo, out hi);
        }
        else
        {
            lo = Unsafe.ReadUnaligned<Vector<double>>(p);
            hi = Unsafe.ReadUnaligned<Vector<double>>((double*)p + Vector<double>.Count);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<double> LoadDouble(double* p) => Unsafe.ReadUnaligned<Vector<double>>(p);

    /// <summary>p[0 .. 2h) += (lo, hi): folds one widened block's column accumulators into float64 sums.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AddWide(double* p, Vector<double> lo, Vector<double> hi)
    {
        Unsafe.WriteUnaligned(p, LoadDouble(p) + lo);
        Unsafe.WriteUnaligned(p + Vector<double>.Count, LoadDouble(p + Vector<double>.Count) + hi);
    }

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

    // ---- contiguous reductions -----------------------------------------------------------------------

    /// <summary>
    /// Σ p[i] in T's own precision, for the first pass of a two-pass variance: that pass only needs a
    /// mean close to the true one, because the second pass sums x − m in float64 and corrects m exactly.
    /// Skipping the widening to float64 makes it about twice as fast.
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

    /// <summary>Σ (p[i] − m) and Σ (p[i] − m)², the second pass of a two-pass variance.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static (double Dev, double SqDev) SumDeviations<T>(T* p, long n, double m) where T : unmanaged
    {
        if (typeof(T) == typeof(float)) return SumDeviationsSingle((float*)p, n, m);
        long i = 0;
        double s = 0, q = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = BlockWidth;
            var vm = new Vector<double>(m);
            Vector<double> s0 = default, s1 = default, q0 = default, q1 = default;
            Vector<double> s2 = default, s3 = default, q2 = default, q3 = default;
            for (; i <= n - 2 * w; i += 2 * w)
            {
                LoadWide(p + i, out var l0, out var h0);
                LoadWide(p + i + w, out var l1, out var h1);
                l0 -= vm;
                h0 -= vm;
                l1 -= vm;
                h1 -= vm;
                s0 += l0;
                s1 += h0;
                s2 += l1;
                s3 += h1;
                q0 += l0 * l0;
                q1 += h0 * h0;
                q2 += l1 * l1;
                q3 += h1 * h1;
            }
            for (; i <= n - w; i += w)
            {
                LoadWide(p + i, out var l0, out var h0);
                l0 -= vm;
                h0 -= vm;
                s0 += l0;
                s1 += h0;
                q0 += l0 * l0;
                q1 += h0 * h0;
            }
            s = Vector.Sum((s0 + s2) + (s1 + s3));
            q = Vector.Sum((q0 + q2) + (q1 + q3));
        }
        for (; i < n; i++)
        {
            double d = ToDouble(p[i]) - m;
            s += d;
            q += d * d;
        }
        return (s, q);
    }

    /// <summary>Σ dy and Σ dy·(x − m): the per-(n, c) sums A and B of the backward pass.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static (double A, double B) GradientSums<T>(T* x, T* dy, long n, double m) where T : unmanaged
    {
        if (typeof(T) == typeof(float)) return GradientSumsSingle((float*)x, (float*)dy, n, m);
        long i = 0;
        double a = 0, b = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = BlockWidth;
            var vm = new Vector<double>(m);
            Vector<double> a0 = default, a1 = default, b0 = default, b1 = default;
            Vector<double> a2 = default, a3 = default, b2 = default, b3 = default;
            for (; i <= n - 2 * w; i += 2 * w)
            {
                LoadWide(x + i, out var xl0, out var xh0);
                LoadWide(dy + i, out var gl0, out var gh0);
                LoadWide(x + i + w, out var xl1, out var xh1);
                LoadWide(dy + i + w, out var gl1, out var gh1);
                a0 += gl0;
                a1 += gh0;
                a2 += gl1;
                a3 += gh1;
                b0 += gl0 * (xl0 - vm);
                b1 += gh0 * (xh0 - vm);
                b2 += gl1 * (xl1 - vm);
                b3 += gh1 * (xh1 - vm);
            }
            for (; i <= n - w; i += w)
            {
                LoadWide(x + i, out var xl, out var xh);
                LoadWide(dy + i, out var gl, out var gh);
                a0 += gl;
                a1 += gh;
                b0 += gl * (xl - vm);
                b1 += gh * (xh - vm);
            }
            a = Vector.Sum((a0 + a2) + (a1 + a3));
            b = Vector.Sum((b0 + b2) + (b1 + b3));
        }
        for (; i < n; i++)
        {
            double g = ToDouble(dy[i]);
            a += g;
            b += g * (ToDouble(x[i]) - m);
        }
        return (a, b);
    }

    // ---- contiguous element-wise loops (in T) ---------------------------------------------------

    /// <summary>y = ((x − μhi) − μlo)·scale + shift.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Normalize<T>(T* x, T* y, long n, T muHi, T muLo, T scale, T shift)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        long i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<T>.Count;
            var vh = new Vector<T>(muHi);
            var vl = new Vector<T>(muLo);
            var vs = new Vector<T>(scale);
            var vb = new Vector<T>(shift);
            for (; i <= n - 2 * w; i += 2 * w)
            {
                var v0 = Load(x + i);
                var v1 = Load(x + i + w);
                Store(y + i, ((v0 - vh) - vl) * vs + vb);
                Store(y + i + w, ((v1 - vh) - vl) * vs + vb);
            }
            for (; i <= n - w; i += w)
                Store(y + i, ((Load(x + i) - vh) - vl) * vs + vb);
        }
        for (; i < n; i++) y[i] = ((x[i] - muHi) - muLo) * scale + shift;
    }

    /// <summary>dx = a·dy + b·((x − μhi) − μlo) + k.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void InputGradient<T>(T* x, T* dy, T* dx, long n, T muHi, T muLo, T a, T b, T k)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        long i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<T>.Count;
            var vh = new Vector<T>(muHi);
            var vl = new Vector<T>(muLo);
            var va = new Vector<T>(a);
            var vb = new Vector<T>(b);
            var vk = new Vector<T>(k);
            for (; i <= n - 2 * w; i += 2 * w)
            {
                var x0 = Load(x + i);
                var x1 = Load(x + i + w);
                var g0 = Load(dy + i);
                var g1 = Load(dy + i + w);
                Store(dx + i, va * g0 + (vb * ((x0 - vh) - vl) + vk));
                Store(dx + i + w, va * g1 + (vb * ((x1 - vh) - vl) + vk));
            }
            for (; i <= n - w; i += w)
                Store(dx + i, va * Load(dy + i) + (vb * ((Load(x + i) - vh) - vl) + vk));
        }
        for (; i < n; i++) dx[i] = a * dy[i] + (b * ((x[i] - muHi) - muLo) + k);
    }

    // ---- channels-last piece loops: `rows` spatial positions × C contiguous channels ----------------
    // Each loop walks one block of channels down all rows of an L1-sized piece, so accumulators and
    // per-channel coefficients stay in registers instead of being reloaded for every position.

    /// <summary>sum[j] += Σ_r x[r·C + j] for every channel j.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void AccumulateColumns<T>(T* x, long rows, long c, double* sum) where T : unmanaged
    {
        if (typeof(T) == typeof(float))
        {
            AccumulateColumnsSingle((float*)x, rows, c, sum);
            return;
        }
        long j = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = BlockWidth;
            for (; j <= c - w; j += w)
            {
                Vector<double> l0 = default, h0 = default, l1 = default, h1 = default;
                T* p = x + j;
                long r = 0;
                for (; r + 1 < rows; r += 2)
                {
                    LoadWide(p + r * c, out var la, out var ha);
                    LoadWide(p + (r + 1) * c, out var lb, out var hb);
                    l0 += la;
                    h0 += ha;
                    l1 += lb;
                    h1 += hb;
                }
                if (r < rows)
                {
                    LoadWide(p + r * c, out var la, out var ha);
                    l0 += la;
                    h0 += ha;
                }
                AddWide(sum + j, l0 + l1, h0 + h1);
            }
        }
        for (; j < c; j++)
        {
            double acc = 0;
            for (long r = 0; r < rows; r++) acc += ToDouble(x[r * c + j]);
            sum[j] += acc;
        }
    }

    /// <summary>dev[j] += Σ_r (x − m[j]); sq[j] += Σ_r (x − m[j])², per channel j.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void AccumulateColumnDeviations<T>(T* x, long rows, long c, double* m, double* dev, double* sq) where T : unmanaged
    {
        if (typeof(T) == typeof(float))
        {
            AccumulateColumnDeviationsSingle((float*)x, rows, c, m, dev, sq);
            return;
        }
        long j = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = BlockWidth, h = Vector<double>.Count;
            for (; j <= c - w; j += w)
            {
                var ml = LoadDouble(m + j);
                var mh = LoadDouble(m + j + h);
                Vector<double> sl = default, sh = default, ql = default, qh = default;
                T* p = x + j;
                for (long r = 0; r < rows; r++)
                {
                    LoadWide(p + r * c, out var lo, out var hi);
                    lo -= ml;
                    hi -= mh;
                    sl += lo;
                    sh += hi;
                    ql += lo * lo;
                    qh += hi * hi;
                }
                AddWide(dev + j, sl, sh);
                AddWide(sq + j, ql, qh);
            }
        }
        for (; j < c; j++)
        {
            double sd = 0, sqd = 0;
            for (long r = 0; r < rows; r++)
            {
                double d = ToDouble(x[r * c + j]) - m[j];
                sd += d;
                sqd += d * d;
            }
            dev[j] += sd;
            sq[j] += sqd;
        }
    }

    /// <summary>sumA[j] += Σ_r dy; sumB[j] += Σ_r dy·(x − m[j]), per channel j.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void AccumulateGradientColumns<T>(T* x, T* dy, long rows, long c, double* m, double* sumA, double* sumB) where T : unmanaged
    {
        if (typeof(T) == typeof(float))
        {
            AccumulateGradientColumnsSingle((float*)x, (float*)dy, rows, c, m, sumA, sumB);
            return;
        }
        long j = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = BlockWidth, h = Vector<double>.Count;
            for (; j <= c - w; j += w)
            {
                var ml = LoadDouble(m + j);
                var mh = LoadDouble(m + j + h);
                Vector<double> al = default, ah = default, bl = default, bh = default;
                T* px = x + j;
                T* pg = dy + j;
                for (long r = 0; r < rows; r++)
                {
                    LoadWide(px + r * c, out var xl, out var xh);
                    LoadWide(pg + r * c, out var gl, out var gh);
                    al += gl;
                    ah += gh;
                    bl += gl * (xl - ml);
                    bh += gh * (xh - mh);
                }
                AddWide(sumA + j, al, ah);
                AddWide(sumB + j, bl, bh);
            }
        }
        for (; j < c; j++)
        {
            double a = 0, b = 0;
            for (long r = 0; r < rows; r++)
            {
                double g = ToDouble(dy[r * c + j]);
                a += g;
                b += g * (ToDouble(x[r * c + j]) - m[j]);
            }
            sumA[j] += a;
            sumB[j] += b;
        }
    }

    /// <summary>y = ((x − μhi[j]) − μlo[j])·scale[j] + shift[j] for every row and channel j.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void NormalizeColumns<T>(T* x, T* y, long rows, long c, T* muHi, T* muLo, T* scale, T* shift)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        // Row by row: x and y stream sequentially, and the coefficient rows stay in L1.
        int w = Vector.IsHardwareAccelerated ? Vector<T>.Count : int.MaxValue;
        for (long r = 0; r < rows; r++)
        {
            T* xr = x + r * c, yr = y + r * c;
            long j = 0;
            for (; j <= c - w; j += w)
                Store(yr + j, ((Load(xr + j) - Load(muHi + j)) - Load(muLo + j)) * Load(scale + j) + Load(shift + j));
            for (; j < c; j++)
                yr[j] = ((xr[j] - muHi[j]) - muLo[j]) * scale[j] + shift[j];
        }
    }

    /// <summary>dx = a[j]·dy + b[j]·((x − μhi[j]) − μlo[j]) + k[j] for every row and channel j.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void InputGradientColumns<T>(T* x, T* dy, T* dx, long rows, long c, T* muHi, T* muLo, T* a, T* b, T* k)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int w = Vector.IsHardwareAccelerated ? Vector<T>.Count : int.MaxValue;
        for (long r = 0; r < rows; r++)
        {
            T* xr = x + r * c, gr = dy + r * c, dr = dx + r * c;
            long j = 0;
            for (; j <= c - w; j += w)
                Store(dr + j, Load(a + j) * Load(gr + j) + (Load(b + j) * ((Load(xr + j) - Load(muHi + j)) - Load(muLo + j)) + Load(k + j)));
            for (; j < c; j++)
                dr[j] = a[j] * gr[j] + (b[j] * ((xr[j] - muHi[j]) - muLo[j]) + k[j]);
        }
    }
}
