using System;
using System.Numerics;
using System.Runtime.CompilerServices;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>
/// GroupNorm over row-major (N, C, *) memory, where group (n, g) is one contiguous row of D·S elements
/// (D channel planes of S elements). Forward: <see cref="RowwiseMoments"/>, then <c>ApplyScaleBias</c>.
/// Backward: <c>ChannelGradientSums</c>, then <c>InputGradient</c>. Type parameters: TE reads
/// and writes the stored type TS, arithmetic runs in T, TA is the fused activation, TR whether a residual
/// joins its input.
/// </summary>
internal static unsafe class ChannelsFirstKernel
{
    /// <summary>Elements whose mean becomes a row's statistics' shift (see <see cref="RowwiseMoments"/>).</summary>
    private const int ShiftSample = 256;

    /// <summary>Planes up to this size go through one loop per row, in forward and in backward's dx.</summary>
    private const long SmallPlane = 256;

    /// <summary>Most planes whose constants a row keeps on the stack for that loop.</summary>
    private const long MaxStackPlanes = 1024;

    /// <summary>
    /// Moments of a contiguous span in one pass (see <see cref="GroupNormMath.ShiftedMoments"/>), shifted by
    /// the mean of its first <see cref="ShiftSample"/> elements; a second pass only when that shift turns out
    /// far from the mean. Any value near the mean serves as the shift, and a larger sample only made rows
    /// that fit in cache (ResNet-20's 512–2,048 elements) read their data three times.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static Moments RowwiseMoments<TE, TS, T>(TS* p, long length)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (length == 0) return default;
        long first = Math.Min(ShiftSample, length);
        var (hi, lo) = GroupNormMath.SplitMean<T>(ContiguousLoops.RoughSum<TE, TS, T>(p, first) / first);
        var (dev, sq) = Reductions.Span<T, DeviationTerms<TE, TS, T>>(new(p, hi, lo), length);
        if (!GroupNormMath.ShiftWasClose(length, dev, sq))
        {
            (hi, lo) = GroupNormMath.SplitMean<T>(GroupNormMath.ShiftedMoments(length, Shift(hi, lo), dev, sq).Mean);
            (dev, sq) = Reductions.Span<T, DeviationTerms<TE, TS, T>>(new(p, hi, lo), length);
        }
        return GroupNormMath.ShiftedMoments(length, Shift(hi, lo), dev, sq);

        // The shift exactly as the loops subtract it.
        static double Shift(T hi, T lo) => double.CreateTruncating(hi) + double.CreateTruncating(lo);
    }

    /// <summary>
    /// Whether elements [start, end) of a row are whole planes of whole vector pairs, up to
    /// <see cref="SmallPlane"/> elements each and no more of them than fit on the stack: the rows that forward
    /// and backward's dx run as one loop per row.
    /// </summary>
    private static bool WholeSmallPlanes<T>(long plane, long start, long end) where T : unmanaged =>
        Vector.IsHardwareAccelerated && plane % (2 * Vector<T>.Count) == 0 && plane <= SmallPlane
        && start % plane == 0 && end % plane == 0 && (end - start) / plane <= MaxStackPlanes;

    /// <summary>scale[k] and shift[k] (the pre-activation's, <see cref="GroupConstants{T}.Channel"/>) of <paramref name="planes"/> channels from c0 on.</summary>
    private static void PlaneCoefficients<T>(in GroupConstants<T> group, long c0, long planes, T* scale, T* shift)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        for (long k = 0; k < planes; k++) (scale[k], shift[k]) = group.Channel(c0 + k);
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

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public static void WholeRows(void* job, long start, long end)
        {
            var j = (ForwardJob<TE, TS, T, TA, TR>*)job;
            long len = j->Plan.RowLength;
            long batch = WorkPlan.RowBatch(len * sizeof(TS));
            for (long r0 = start; r0 < end; r0 += batch)
            {
                long r1 = Math.Min(end, r0 + batch);
                for (long r = r0; r < r1; r++) j->SetStatistics(r, RowwiseMoments<TE, TS, T>(j->O.X + r * len, len));
                for (long r = r0; r < r1; r++) j->ApplyScaleBias(r, 0, len);
            }
        }

        public readonly long PerItem => 1;

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public readonly void BlockMoments(long row, long start, long end, Moments* moments) =>
            *moments = RowwiseMoments<TE, TS, T>(O.X + row * Plan.RowLength + start, end - start);


        private readonly void SetStatistics(long row, in Moments m)
        {
            O.Mean[row] = m.Mean;
            O.Rstd[row] = GroupNormMath.Rstd(m.Variance, Eps);
        }

        /// <summary>y = act((x − μ)·r·γ + β + residual) over elements [start, end) of row r, channel plane by channel plane.</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public readonly void ApplyScaleBias(long r, long start, long end)
        {
            long g = r % S.G, plane = S.S;
            TS* xr = O.X + r * Plan.RowLength, yr = O.Y + r * Plan.RowLength, rr = O.Residual + r * Plan.RowLength;
            var group = new GroupConstants<T>(O.Mean[r], O.Rstd[r], O.Weight, O.Bias);
            if (WholeSmallPlanes<T>(plane, start, end))
            {
                // Small planes in one loop (see ContiguousLoops.NormalizePlanes), their constants first.
                long planes = (end - start) / plane;
                T* scale = stackalloc T[(int)planes];
                T* shift = stackalloc T[(int)planes];
                PlaneCoefficients(group, g * S.D + start / plane, planes, scale, shift);
                ContiguousLoops.NormalizePlanes<TE, TS, T, TA, TR>(xr + start, rr + start, yr + start, planes, plane, group.Hi, scale, shift);
                return;
            }
            // One division per call: with 7x7 planes, a division per channel cost as much as the arithmetic.
            for (long pos = start, local = start / plane; pos < end; local++)
            {
                long stop = Math.Min(end, (local + 1) * plane);
                var (scale, shift) = group.Channel(g * S.D + local);
                ContiguousLoops.Normalize<TE, TS, T, TA, TR>(xr + pos, rr + pos, yr + pos, stop - pos, group.Hi, scale, shift);
                pos = stop;
            }
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
            long len = j->Plan.RowLength, d = j->S.D;
            long batch = WorkPlan.RowBatch(2 * len * sizeof(TS));
            for (long r0 = start; r0 < end; r0 += batch)
            {
                long r1 = Math.Min(end, r0 + batch);
                new Span<double>(j->O.SumA + r0 * d, (int)((r1 - r0) * d)).Clear();
                new Span<double>(j->O.SumB + r0 * d, (int)((r1 - r0) * d)).Clear();
                for (long r = r0; r < r1; r++) j->ChannelGradientSums(r, 0, len, j->O.SumA + r * d, j->O.SumB + r * d);
                if (j->O.Dx == null) continue;
                for (long r = r0; r < r1; r++) j->InputGradient(r, 0, len);
            }
        }

        public readonly long PerItem => S.D;


        /// <summary>Adds the sums A and B of elements [start, end) of row r into its channels' slots a[j], b[j].</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public readonly void ChannelGradientSums(long r, long start, long end, double* a, double* b)
        {
            long g = r % S.G, plane = S.S;
            TS* xr = O.X + r * Plan.RowLength, gr = O.Dy + r * Plan.RowLength, rr = O.Residual + r * Plan.RowLength;
            TS* stash = O.DzStash<TA>();
            TS* zr = stash == null ? null : stash + r * Plan.RowLength;
            var group = new GroupConstants<T>(O.Mean[r], O.Rstd[r], O.Weight, O.Bias);
            for (long pos = start, local = start / plane; pos < end; local++)
            {
                long stop = Math.Min(end, (local + 1) * plane);
                // The pre-activation's coefficients, needed only to rebuild z for act′(z).
                var (scale, shift) = TA.IsIdentity ? default : group.Channel(g * S.D + local);
                var terms = new GradientTerms<TE, TS, T, TA, TR>(xr + pos, rr + pos, gr + pos, zr == null ? null : zr + pos, group.Hi, group.Lo, scale, shift);
                var (sa, sb) = Reductions.IsShort<T>(stop - pos)
                    ? Reductions.ShortSpan<T, GradientTerms<TE, TS, T, TA, TR>>(terms, stop - pos)
                    : Reductions.Span<T, GradientTerms<TE, TS, T, TA, TR>>(terms, stop - pos);
                a[local] += sa;
                b[local] += sb;
                pos = stop;
            }
        }

        /// <summary>dx over elements [start, end) of row r, from the row's complete sums.</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public readonly void InputGradient(long r, long start, long end)
        {
            long g = r % S.G, plane = S.S;
            var group = new GroupConstants<T>(O.Mean[r], O.Rstd[r], O.Weight, O.Bias);
            var (b, k) = group.InputGradient(g * S.D, S.D, O.SumA + r * S.D, O.SumB + r * S.D, Plan.RowLength);

            TS* xr = O.X + r * Plan.RowLength, gr = O.Dy + r * Plan.RowLength, dr = O.Dx + r * Plan.RowLength;
            TS* rr = O.Residual + r * Plan.RowLength, zr = O.DzStash<TA>() + r * Plan.RowLength;
            if (WholeSmallPlanes<T>(plane, start, end))
            {
                // Small planes in one loop (ContiguousLoops.InputGradientPlanes), their constants first.
                long planes = (end - start) / plane;
                T* scale = stackalloc T[(int)planes];
                T* shift = stackalloc T[(int)planes];
                PlaneCoefficients(group, g * S.D + start / plane, planes, scale, shift);
                if (GradientStash.Used<TS, T, TA>())
                    ContiguousLoops.InputGradientPlanes<TE, TS, T, Identity, NoResidual>(xr + start, null, zr + start, dr + start, planes, plane, group.Hi, scale, b, k, shift);
                else
                    ContiguousLoops.InputGradientPlanes<TE, TS, T, TA, TR>(xr + start, rr + start, gr + start, dr + start, planes, plane, group.Hi, scale, b, k, shift);
                return;
            }
            for (long pos = start, local = start / plane; pos < end; local++)
            {
                long stop = Math.Min(end, (local + 1) * plane);
                var (a, shift) = group.Channel(g * S.D + local);
                if (GradientStash.Used<TS, T, TA>())
                    ContiguousLoops.InputGradient<TE, TS, T, Identity, NoResidual>(xr + pos, null, zr + pos, dr + pos, stop - pos, group.Hi, a, b, k, shift);
                else
                    ContiguousLoops.InputGradient<TE, TS, T, TA, TR>(xr + pos, rr + pos, gr + pos, dr + pos, stop - pos, group.Hi, a, b, k, shift);
                pos = stop;
            }
        }
    }
}
