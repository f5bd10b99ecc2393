using System;
using System.Numerics;
using System.Runtime.CompilerServices;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>
/// GroupNorm over channels-last memory, (N, *spatial, C) with channels innermost: a row is sample n, S
/// positions of C contiguous channels, processed in L1-sized pieces of positions with per-channel
/// coefficient arrays. Forward: <see cref="ColumnwiseMoments"/>, then <c>ApplyScaleBias</c>.
/// Backward: <c>ChannelGradientSums</c>, then <c>InputGradient</c>. Type parameters as in
/// <see cref="ChannelsFirstKernel"/>.
/// </summary>
internal static unsafe class ChannelsLastKernel
{
    /// <summary>
    /// Per-channel constants of sample n's output, z = (x − hi[c])·scale[c] + shift[c] (μlo folded into
    /// shift), and lo[c] for the centred sums; <paramref name="lo"/>, and <paramref name="scale"/> with
    /// <paramref name="shift"/>, may be null when not needed.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void OutputCoefficients<T>(GroupNormShape s, long n, double* mean, double* rstd, T* weight, T* bias, T* hi, T* lo, T* scale, T* shift)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        for (long g = 0; g < s.G; g++)
        {
            var group = new GroupConstants<T>(mean[n * s.G + g], rstd[n * s.G + g], weight, bias);
            for (long c = g * s.D; c < (g + 1) * s.D; c++)
            {
                hi[c] = group.Hi;
                if (lo != null) lo[c] = group.Lo;
                if (scale != null) (scale[c], shift[c]) = group.Channel(c);
            }
        }
    }

    /// <summary>
    /// Per-group moments of positions [p0, p1) of a sample at <paramref name="xs"/>, merged into
    /// <paramref name="groups"/>, in one pass over x (see <see cref="GroupNormMath.ShiftedMoments"/>); the
    /// shifts are the groups' means over the first piece, and a group whose shift proves far is summed again.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ColumnwiseMoments<TE, TS, T>(TS* xs, GroupNormShape s, long p0, long p1, Span<Moments> groups)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
    {
        long c = s.C, d = s.D;
        long pieceRows = WorkPlan.PieceRows(c, 1, sizeof(TS));
        using var scratch = new Scratch(3 * c * sizeof(double) + 2 * c * sizeof(T));
        double* shift = (double*)scratch.Pointer, dev = shift + c, sq = dev + c;
        T* shiftHi = (T*)(sq + c), shiftLo = shiftHi + c;

        long first = Math.Min(pieceRows, p1 - p0);
        new Span<double>(shift, (int)c).Clear();
        ColumnLoops.AccumulateColumns<TE, TS, T>(xs + p0 * c, first, c, shift);
        for (long g = 0; g < s.G; g++)
        {
            double sum = 0;
            for (long j = g * d; j < (g + 1) * d; j++) sum += shift[j];
            SetShift(g, sum / (first * d));
        }

        double count = (p1 - p0) * d;
        AccumulateDeviations();
        bool again = false;
        for (long g = 0; g < s.G; g++)
        {
            var (sd, ssq) = GroupSums(g);
            if (GroupNormMath.ShiftWasClose(count, sd, ssq)) continue;
            SetShift(g, GroupNormMath.ShiftedMoments(count, shift[g * d], sd, ssq).Mean);
            again = true;
        }
        if (again) AccumulateDeviations();

        for (long g = 0; g < s.G; g++)
        {
            var (sd, ssq) = GroupSums(g);
            groups[(int)g].Merge(GroupNormMath.ShiftedMoments(count, shift[g * d], sd, ssq));
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        void AccumulateDeviations()
        {
            new Span<double>(dev, (int)(2 * c)).Clear();
            for (long q = p0; q < p1; q += pieceRows)
                Reductions.Columns<T, DeviationTerms<TE, TS, T>>(new(xs + q * c, shiftHi, shiftLo), Math.Min(pieceRows, p1 - q), c, dev, sq);
        }

        // The shift of every channel of group g, as the loops will subtract it.
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        void SetShift(long g, double value)
        {
            var (h, l) = GroupNormMath.SplitMean<T>(value);
            double exact = double.CreateTruncating(h) + double.CreateTruncating(l);
            new Span<double>(shift + g * d, (int)d).Fill(exact);
            new Span<T>(shiftHi + g * d, (int)d).Fill(h);
            new Span<T>(shiftLo + g * d, (int)d).Fill(l);
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        (double Dev, double SqDev) GroupSums(long g)
        {
            double sd = 0, ssq = 0;
            for (long j = g * d; j < (g + 1) * d; j++)
            {
                sd += dev[j];
                ssq += sq[j];
            }
            return (sd, ssq);
        }
    }

    internal struct ForwardJob<TE, TS, T, TA, TR> : IForwardJob<ForwardJob<TE, TS, T, TA, TR>>
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
        where TA : struct, IActivation where TR : struct, IResidual
    {
        public ForwardOperands<TS, T> O;
        public GroupNormShape S;
        public double Eps;
        public WorkPlan Plan { get; init; }

        public static ForwardJob<TE, TS, T, TA, TR> For(ForwardCall* call) =>
            new() { O = new(call), S = call->Shape, Eps = call->Eps, Plan = call->Plan };

        /// <summary>Whole samples: each one's group moments, its μ and r, then its output.</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public static void WholeRows(void* job, long start, long end)
        {
            var j = (ForwardJob<TE, TS, T, TA, TR>*)job;
            long g = j->S.G;
            using var scratch = new Scratch(g * sizeof(Moments));
            var groups = new Span<Moments>(scratch.Pointer, (int)g);
            for (long n = start; n < end; n++)
            {
                groups.Clear();
                ColumnwiseMoments<TE, TS, T>(j->Sample(j->O.X, n), j->S, 0, j->S.S, groups);
                for (long k = 0; k < g; k++)
                {
                    j->O.Mean[n * g + k] = groups[(int)k].Mean;
                    j->O.Rstd[n * g + k] = GroupNormMath.Rstd(groups[(int)k].Variance, j->Eps);
                }
                j->ApplyScaleBias(n, 0, j->S.S);
            }
        }

        public readonly long PerItem => S.G;

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public readonly void BlockMoments(long n, long p0, long p1, Moments* moments)
        {
            var groups = new Span<Moments>(moments, (int)S.G);
            groups.Clear();
            ColumnwiseMoments<TE, TS, T>(Sample(O.X, n), S, p0, p1, groups);
        }


        private readonly TS* Sample(TS* p, long n) => p + n * S.S * S.C;

        /// <summary>y = act((x − μ)·r·γ + β + residual) over positions [p0, p1) of sample n.</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public readonly void ApplyScaleBias(long n, long p0, long p1)
        {
            long c = S.C;
            using var scratch = new Scratch(3 * c * sizeof(T));
            T* hi = (T*)scratch.Pointer, scale = hi + c, shift = scale + c;
            OutputCoefficients(S, n, O.Mean, O.Rstd, O.Weight, O.Bias, hi, null, scale, shift);
            TS* xs = Sample(O.X, n), ys = Sample(O.Y, n), rs = Sample(O.Residual, n);
            long pieceRows = WorkPlan.PieceRows(c, TR.Present ? 3 : 2, sizeof(TS));
            for (long q = p0; q < p1; q += pieceRows)
                ColumnLoops.Normalize<TE, TS, T, TA, TR>(xs + q * c, rs + q * c, ys + q * c, Math.Min(pieceRows, p1 - q), c, hi, scale, shift);
        }
    }

    internal struct BackwardJob<TE, TS, T, TA, TR> : IBackwardJob<BackwardJob<TE, TS, T, TA, TR>>
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
        where TA : struct, IActivation where TR : struct, IResidual
    {
        public BackwardOperands<TS, T> O;
        public GroupNormShape S;
        public WorkPlan Plan { get; init; }

        public static BackwardJob<TE, TS, T, TA, TR> For(BackwardCall* call) =>
            new() { O = new(call), S = call->Shape, Plan = call->Plan };

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public static void WholeRows(void* job, long start, long end)
        {
            var j = (BackwardJob<TE, TS, T, TA, TR>*)job;
            long c = j->S.C;
            for (long n = start; n < end; n++)
            {
                new Span<double>(j->O.SumA + n * c, (int)c).Clear();
                new Span<double>(j->O.SumB + n * c, (int)c).Clear();
                j->ChannelGradientSums(n, 0, j->S.S, j->O.SumA + n * c, j->O.SumB + n * c);
                if (j->O.Dx != null) j->InputGradient(n, 0, j->S.S);
            }
        }

        public readonly long PerItem => S.C;


        private readonly TS* Sample(TS* p, long n) => p + n * S.S * S.C;

        /// <summary>Adds the sums A and B of positions [p0, p1) of sample n into a[c], b[c].</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public readonly void ChannelGradientSums(long n, long p0, long p1, double* a, double* b)
        {
            long c = S.C;
            using var scratch = new Scratch(4 * c * sizeof(T));
            T* hi = (T*)scratch.Pointer, lo = hi + c, scale = lo + c, shift = scale + c;
            // The pre-activation's scale and shift only rebuild z for act′(z): plain GroupNorm needs μ alone.
            if (TA.IsIdentity) scale = shift = null;
            OutputCoefficients(S, n, O.Mean, O.Rstd, O.Weight, O.Bias, hi, lo, scale, shift);
            TS* xs = Sample(O.X, n), gs = Sample(O.Dy, n), rs = Sample(O.Residual, n);
            TS* stash = O.DzStash<TA>();
            TS* zs = stash == null ? null : Sample(stash, n);
            long pieceRows = WorkPlan.PieceRows(c, TR.Present ? 3 : 2, sizeof(TS));
            for (long q = p0; q < p1; q += pieceRows)
            {
                var terms = new GradientTerms<TE, TS, T, TA, TR>(xs + q * c, rs + q * c, gs + q * c, zs == null ? null : zs + q * c, hi, lo, scale, shift);
                Reductions.Columns<T, GradientTerms<TE, TS, T, TA, TR>>(terms, Math.Min(pieceRows, p1 - q), c, a, b);
            }
        }

        /// <summary>dx over positions [p0, p1) of sample n, from the sample's complete sums.</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public readonly void InputGradient(long n, long p0, long p1)
        {
            long c = S.C;
            using var scratch = new Scratch(5 * c * sizeof(T));
            T* hi = (T*)scratch.Pointer, a = hi + c, shift = a + c, b = shift + c, k = b + c;
            for (long g = 0; g < S.G; g++)
            {
                long c0 = g * S.D;
                var group = new GroupConstants<T>(O.Mean[n * S.G + g], O.Rstd[n * S.G + g], O.Weight, O.Bias);
                var (bt, kt) = group.InputGradient(c0, S.D, O.SumA + n * c + c0, O.SumB + n * c + c0, S.GroupSize);
                for (long j = c0; j < c0 + S.D; j++)
                {
                    hi[j] = group.Hi;
                    (a[j], shift[j]) = group.Channel(j);
                    b[j] = bt;
                    k[j] = kt;
                }
            }
            TS* xs = Sample(O.X, n), gs = Sample(O.Dy, n), ds = Sample(O.Dx, n), rs = Sample(O.Residual, n), zs = Sample(O.DzStash<TA>(), n);
            long pieceRows = WorkPlan.PieceRows(c, TR.Present ? 4 : 3, sizeof(TS));
            for (long q = p0; q < p1; q += pieceRows)
            {
                long rows = Math.Min(pieceRows, p1 - q);
                if (GradientStash.Used<TS, T, TA>())
                    ColumnLoops.InputGradient<TE, TS, T, Identity, NoResidual>(xs + q * c, null, zs + q * c, ds + q * c, rows, c, hi, a, b, k, shift);
                else
                    ColumnLoops.InputGradient<TE, TS, T, TA, TR>(xs + q * c, rs + q * c, gs + q * c, ds + q * c, rows, c, hi, a, b, k, shift);
            }
        }
    }
}
