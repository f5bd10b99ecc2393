using System;
using System.Numerics;
using System.Runtime.CompilerServices;
using static GroupNormalization.Kernels.Cpu.VectorMath;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>
/// The arithmetic of a reduction that sums two terms per element (Σd and Σd² for the statistics, Σdz and
/// Σdz·(x − μ) for backward), handed to the loop skeletons of <see cref="Reductions"/> as a struct, so that
/// each skeleton is written once and the JIT inlines the arithmetic into it. An operator holds its
/// pointers and its per-channel constants: uniform ones for a contiguous span, or for a channels-last
/// piece the block of channels <see cref="Columns"/> selects (offsets are then relative to that block).
/// </summary>
internal interface ITwoSums<TSelf, T>
    where TSelf : struct, ITwoSums<TSelf, T>
    where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>Whether a span's last partial vector is summed as its last full vector with the lanes already counted masked out.</summary>
    static abstract bool MaskedTail { get; }

    /// <summary>This operator for the channels j .. j + <c>Vector&lt;T&gt;.Count</c> of a channels-last piece.</summary>
    TSelf Columns(long j);

    /// <summary>Adds the terms of the vector at element offset i to a and b.</summary>
    void Add(long i, ref Vector<T> a, ref Vector<T> b);

    /// <summary>Adds the terms of the vectors at i0 and i1 (an activation may evaluate the two as one wider vector).</summary>
    void AddPair(long i0, long i1, ref Vector<T> a0, ref Vector<T> b0, ref Vector<T> a1, ref Vector<T> b1);

    /// <summary>As <see cref="Add"/>, without the first <paramref name="skip"/> lanes.</summary>
    void AddMasked(long i, long skip, ref Vector<T> a, ref Vector<T> b);

    /// <summary>The two terms of element i of channel j, for spans and pieces that end off the vector width.</summary>
    (double A, double B) Scalar(long i, long j);
}

/// <summary>
/// The two loop skeletons of the kernels' two-term reductions. Terms accumulate in T, not float64:
/// widening every float32 element made these loops the kernels' bottleneck. That stays accurate because
/// every value summed is a deviation from a shift close to the data's mean (formed as (x − mhi) − mlo, see
/// <see cref="GroupNormMath.SplitMean{T}"/>), so terms are of the order of σ, not of |μ|; and no accumulator
/// lane takes more than <see cref="FoldTerms"/> terms before it is folded into float64, which bounds its
/// rounding error to about FoldTerms·2⁻²⁴ of its own partial sum. Four independent accumulators hide the
/// adds' latency.
/// </summary>
internal static unsafe class Reductions
{
    /// <summary>Σ over elements [0, n) of a contiguous span, both terms in float64.</summary>
    /// <remarks>
    /// Inlined, so that the operator's constants stay in registers (as a call per 8×8 plane, copying the
    /// operator cost backward 20%); every caller is therefore compiled fully optimised from its first call
    /// (AggressiveOptimization): inlined into a caller still at tier 0 (a local function, in a benchmark
    /// process that kept compiling new code and so delayed tier-up), the skeleton ran with its operator's
    /// every step a call, 5× slower.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (double A, double B) Span<T, TOp>(TOp op, long n)
        where T : unmanaged, IFloatingPointIeee754<T>
        where TOp : struct, ITwoSums<TOp, T>
    {
        long i = 0;
        double a = 0, b = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<T>.Count;
            Vector<double> da = default, db = default;
            while (i <= n - 4 * w)
            {
                long stop = Math.Min(n - 4 * w, i + (FoldTerms - 1) * 4L * w);
                Vector<T> a0 = default, a1 = default, a2 = default, a3 = default;
                Vector<T> b0 = default, b1 = default, b2 = default, b3 = default;
                for (; i <= stop; i += 4 * w)
                {
                    op.AddPair(i, i + w, ref a0, ref b0, ref a1, ref b1);
                    op.AddPair(i + 2 * w, i + 3 * w, ref a2, ref b2, ref a3, ref b3);
                }
                da += ToDoubleLanes((a0 + a1) + (a2 + a3));
                db += ToDoubleLanes((b0 + b1) + (b2 + b3));
            }
            // Fewer than four vectors left (at most three terms per lane): short planes such as 7×7 end here.
            Vector<T> at = default, bt = default;
            for (; i <= n - w; i += w) op.Add(i, ref at, ref bt);
            if (TOp.MaskedTail && i < n && n >= w)
            {
                op.AddMasked(n - w, i - (n - w), ref at, ref bt);
                i = n;
            }
            da += ToDoubleLanes(at);
            db += ToDoubleLanes(bt);
            a = Vector.Sum(da);
            b = Vector.Sum(db);
        }
        for (; i < n; i++)
        {
            var (ta, tb) = op.Scalar(i, 0);
            a += ta;
            b += tb;
        }
        return (a, b);
    }

    /// <summary>
    /// <see cref="Span"/> for a short span of whole vector pairs, no more than <see cref="FoldTerms"/> pairs
    /// (<see cref="IsShort{T}"/>): one loop and one fold into float64, none of <see cref="Span"/>'s
    /// blocking, tails or masks. With 8×8 planes the backward's sums are a reduction per 64 elements, and
    /// <see cref="Span"/>'s fixed work per call (four accumulators, two folds, the tail's checks) cost as much
    /// as the elements themselves.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (double A, double B) ShortSpan<T, TOp>(TOp op, long n)
        where T : unmanaged, IFloatingPointIeee754<T>
        where TOp : struct, ITwoSums<TOp, T>
    {
        int w = Vector<T>.Count;
        Vector<T> a0 = default, a1 = default, b0 = default, b1 = default;
        for (long i = 0; i < n; i += 2 * w) op.AddPair(i, i + w, ref a0, ref b0, ref a1, ref b1);
        return (Vector.Sum(ToDoubleLanes(a0 + a1)), Vector.Sum(ToDoubleLanes(b0 + b1)));
    }

    /// <summary>Whether <see cref="ShortSpan"/> takes spans of <paramref name="n"/> elements.</summary>
    public static bool IsShort<T>(long n) where T : unmanaged =>
        Vector.IsHardwareAccelerated && n > 0 && n % (2 * Vector<T>.Count) == 0 && n <= 2L * FoldTerms * Vector<T>.Count;

    /// <summary>
    /// sumA[j] += Σ_r A and sumB[j] += Σ_r B for every channel j of a channels-last piece of <paramref name="rows"/>
    /// positions × <paramref name="c"/> channels. Each pass walks one vector of channels down all rows, so
    /// that the accumulators stay in registers instead of being reloaded for every position.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Columns<T, TOp>(TOp op, long rows, long c, double* sumA, double* sumB)
        where T : unmanaged, IFloatingPointIeee754<T>
        where TOp : struct, ITwoSums<TOp, T>
    {
        long j = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int w = Vector<T>.Count;
            long whole = rows & ~3L;
            for (; j <= c - w; j += w)
            {
                var column = op.Columns(j);
                long r = 0;
                while (r < rows)
                {
                    long r4 = Math.Min(whole, r + 4L * FoldTerms);
                    Vector<T> a0 = default, a1 = default, a2 = default, a3 = default;
                    Vector<T> b0 = default, b1 = default, b2 = default, b3 = default;
                    for (; r < r4; r += 4)
                    {
                        column.AddPair(r * c, (r + 1) * c, ref a0, ref b0, ref a1, ref b1);
                        column.AddPair((r + 2) * c, (r + 3) * c, ref a2, ref b2, ref a3, ref b3);
                    }
                    if (r4 == whole)
                    {
                        // The last zero to three rows.
                        for (; r < rows; r++) column.Add(r * c, ref a0, ref b0);
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
                var (ta, tb) = op.Scalar(r * c + j, j);
                a += ta;
                b += tb;
            }
            sumA[j] += a;
            sumB[j] += b;
        }
    }
}

/// <summary>d = (x − mhi) − mlo and d²: the deviations from a shift that the statistics are summed from.</summary>
internal unsafe struct DeviationTerms<TE, TS, T> : ITwoSums<DeviationTerms<TE, TS, T>, T>
    where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly T* _hi, _lo;
    private readonly T _h, _l;
    private TS* _x;
    private Vector<T> _vh, _vl;

    /// <summary>A contiguous span, one shift m = mh + ml.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public DeviationTerms(TS* x, T mh, T ml)
    {
        _x = x;
        (_h, _l) = (mh, ml);
        (_vh, _vl) = (new Vector<T>(mh), new Vector<T>(ml));
    }

    /// <summary>A channels-last piece, one shift per channel j, m[j] = mHi[j] + mLo[j].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public DeviationTerms(TS* x, T* mHi, T* mLo)
    {
        _x = x;
        _hi = mHi;
        _lo = mLo;
    }

    public static bool MaskedTail => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly DeviationTerms<TE, TS, T> Columns(long j) => this with
    {
        _x = _x + j,
        _vh = VectorMath.Load(_hi + j),
        _vl = VectorMath.Load(_lo + j),
    };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly void Add(long i, ref Vector<T> a, ref Vector<T> b)
    {
        var d = (TE.Load(_x + i) - _vh) - _vl;
        a += d;
        b += d * d;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly void AddPair(long i0, long i1, ref Vector<T> a0, ref Vector<T> b0, ref Vector<T> a1, ref Vector<T> b1)
    {
        Add(i0, ref a0, ref b0);
        Add(i1, ref a1, ref b1);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly void AddMasked(long i, long skip, ref Vector<T> a, ref Vector<T> b)
    {
        var d = Vector.ConditionalSelect(Vector.GreaterThanOrEqual(Vector<T>.Indices, new Vector<T>(T.CreateTruncating(skip))), (TE.Load(_x + i) - _vh) - _vl, Vector<T>.Zero);
        a += d;
        b += d * d;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly (double A, double B) Scalar(long i, long j)
    {
        T d = _hi == null ? (TE.Widen(_x[i]) - _h) - _l : (TE.Widen(_x[i]) - _hi[j]) - _lo[j];
        return (ToDouble(d), ToDouble(d * d));
    }
}

/// <summary>
/// dz and dz·(x − m): the per-(n, c) sums A and B of the backward pass, with dz = dy·act′(z) and z rebuilt
/// as forward formed it, z = (x − mhi)·scale + shift (+ r); scale, shift and r are not read without an
/// activation. When dz is given a place (dr, or see <see cref="GradientStash"/>), it is written there too.
/// </summary>
internal unsafe struct GradientTerms<TE, TS, T, TA, TR> : ITwoSums<GradientTerms<TE, TS, T, TA, TR>, T>
    where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
    where TA : struct, IActivation where TR : struct, IResidual
{
    private readonly T* _hi, _lo, _scale, _shift;
    private readonly T _h, _l, _s, _b;
    private TS* _x, _r, _dy, _dz;
    private Vector<T> _vh, _vl, _vs, _vb;

    /// <summary>A contiguous span (one channel plane, or part of one): one set of constants.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public GradientTerms(TS* x, TS* r, TS* dy, TS* dz, T mh, T ml, T scale, T shift)
    {
        _x = x;
        _r = r;
        _dy = dy;
        _dz = dz;
        (_h, _l, _s, _b) = (mh, ml, scale, shift);
        (_vh, _vl, _vs, _vb) = (new Vector<T>(mh), new Vector<T>(ml), new Vector<T>(scale), new Vector<T>(shift));
    }

    /// <summary>A channels-last piece: per-channel arrays.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public GradientTerms(TS* x, TS* r, TS* dy, TS* dz, T* mHi, T* mLo, T* scale, T* shift)
    {
        _x = x;
        _r = r;
        _dy = dy;
        _dz = dz;
        _hi = mHi;
        _lo = mLo;
        _scale = scale;
        _shift = shift;
    }

    public static bool MaskedTail => !TA.IsIdentity;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly GradientTerms<TE, TS, T, TA, TR> Columns(long j) => this with
    {
        _x = _x + j,
        _r = _r == null ? null : _r + j,
        _dy = _dy + j,
        _dz = _dz == null ? null : _dz + j,
        _vh = VectorMath.Load(_hi + j),
        _vl = VectorMath.Load(_lo + j),
        _vs = TA.IsIdentity ? default : VectorMath.Load(_scale + j),
        _vb = TA.IsIdentity ? default : VectorMath.Load(_shift + j),
    };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly void Add(long i, ref Vector<T> a, ref Vector<T> b)
    {
        var c = TE.Load(_x + i) - _vh;
        var g = TE.Load(_dy + i);
        if (!TA.IsIdentity)
        {
            g = TA.Gradient(g, ResidualTerm.Add<TE, TS, T, TR>(c * _vs + _vb, _r, i));
            if (_dz != null) TE.Store(_dz + i, g);
        }
        a += g;
        b += g * (c - _vl);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly void AddPair(long i0, long i1, ref Vector<T> a0, ref Vector<T> b0, ref Vector<T> a1, ref Vector<T> b1)
    {
        var c0 = TE.Load(_x + i0) - _vh;
        var c1 = TE.Load(_x + i1) - _vh;
        var g0 = TE.Load(_dy + i0);
        var g1 = TE.Load(_dy + i1);
        if (!TA.IsIdentity)
        {
            TA.Gradient(ref g0, ref g1, ResidualTerm.Add<TE, TS, T, TR>(c0 * _vs + _vb, _r, i0), ResidualTerm.Add<TE, TS, T, TR>(c1 * _vs + _vb, _r, i1));
            if (_dz != null)
            {
                TE.Store(_dz + i0, g0);
                TE.Store(_dz + i1, g1);
            }
        }
        a0 += g0;
        a1 += g1;
        b0 += g0 * (c0 - _vl);
        b1 += g1 * (c1 - _vl);
    }

    // dz is rewritten whole: the lanes already counted get the same values again.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly void AddMasked(long i, long skip, ref Vector<T> a, ref Vector<T> b)
    {
        var c = TE.Load(_x + i) - _vh;
        var g = TA.Gradient(TE.Load(_dy + i), ResidualTerm.Add<TE, TS, T, TR>(c * _vs + _vb, _r, i));
        if (_dz != null) TE.Store(_dz + i, g);
        g = Vector.ConditionalSelect(Vector.GreaterThanOrEqual(Vector<T>.Indices, new Vector<T>(T.CreateTruncating(skip))), g, Vector<T>.Zero);
        a += g;
        b += g * (c - _vl);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly (double A, double B) Scalar(long i, long j)
    {
        bool span = _hi == null;
        T c = TE.Widen(_x[i]) - (span ? _h : _hi[j]);
        T g = TE.Widen(_dy[i]);
        if (!TA.IsIdentity)
        {
            g = TA.Gradient(g, ResidualTerm.Add<TE, TS, T, TR>(c * (span ? _s : _scale[j]) + (span ? _b : _shift[j]), _r, i));
            if (_dz != null) _dz[i] = TE.Narrow(g);
        }
        return (ToDouble(g), ToDouble(g * (c - (span ? _l : _lo[j]))));
    }
}
