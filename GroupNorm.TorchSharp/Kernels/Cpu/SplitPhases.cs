using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using GroupNormalization.Kernels.Threading;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>
/// A layout kernel's forward job, as <see cref="SplitPhases"/> drives it: whole rows (statistics, then
/// output while the row is in cache) in one body of its own; for split rows, the moments and the output of
/// one block of a row, which the phases' shared loops call item by item.
/// </summary>
internal unsafe interface IForwardJob<TSelf> where TSelf : unmanaged, IForwardJob<TSelf>
{
    /// <summary>The job of one call.</summary>
    static abstract TSelf For(ForwardCall* call);

    static abstract void WholeRows(void* job, long start, long end);

    WorkPlan Plan { get; }

    /// <summary>Moments written per work item: 1 for a channels-first group, G for a channels-last sample.</summary>
    long PerItem { get; }

    /// <summary>The moments of positions [start, end) of a row, into <paramref name="moments"/>[0, <see cref="PerItem"/>).</summary>
    void BlockMoments(long row, long start, long end, Moments* moments);

    /// <summary>The output of positions [start, end) of a row, once the row's statistics are complete.</summary>
    void ApplyScaleBias(long row, long start, long end);
}

/// <summary>A layout kernel's backward job (<see cref="IForwardJob{TSelf}"/>'s counterpart: sums, then dx).</summary>
internal unsafe interface IBackwardJob<TSelf> where TSelf : unmanaged, IBackwardJob<TSelf>
{
    static abstract TSelf For(BackwardCall* call);

    static abstract void WholeRows(void* job, long start, long end);

    WorkPlan Plan { get; }

    /// <summary>Channels summed per work item: D for a channels-first group, C for a channels-last sample.</summary>
    long PerItem { get; }

    /// <summary>Adds the sums A and B of positions [start, end) of a row into its channels' slots a[j], b[j].</summary>
    void ChannelGradientSums(long row, long start, long end, double* a, double* b);

    /// <summary>dx over positions [start, end) of a row, from the row's complete sums.</summary>
    void InputGradient(long row, long start, long end);
}

/// <summary>
/// The phases of a layout kernel, written once for both layouts: one parallel loop over whole rows, or, for
/// a plan that splits rows, a parallel loop over blocks, the serial merge, and a second parallel loop. The
/// block loops are here too; the job supplies what one block computes (a struct operator, inlined).
/// <see cref="CpuFusedKernel"/> calls <see cref="Forward{TJob}"/> or <see cref="Backward{TJob}"/> directly,
/// instantiated for the layout's job.
/// </summary>
internal static unsafe class SplitPhases
{
    public static void Forward<TJob>(ForwardCall* call) where TJob : unmanaged, IForwardJob<TJob>
    {
        var job = TJob.For(call);
        var plan = job.Plan;
        if (plan.Blocks == 1)
        {
            ParallelFor.Run(plan.Rows, plan.Threads, &TJob.WholeRows, &job);
            return;
        }
        long perItem = job.PerItem;
        using var partial = new Scratch(plan.Items * perItem * sizeof(Moments));
        var blocks = new Blocks<TJob> { Job = &job, Moments = (Moments*)partial.Pointer };
        ParallelFor.Run(plan.Items, plan.Threads, &BlockMoments<TJob>, &blocks);
        Moments.MergeBlocks(blocks.Moments, plan, perItem, call->Mean, call->Rstd, call->Eps);
        ParallelFor.Run(plan.Items, plan.Threads, &BlockOutputs<TJob>, &blocks);
    }

    public static void Backward<TJob>(BackwardCall* call) where TJob : unmanaged, IBackwardJob<TJob>
    {
        var job = TJob.For(call);
        var plan = job.Plan;
        if (plan.Blocks == 1)
        {
            ParallelFor.Run(plan.Rows, plan.Threads, &TJob.WholeRows, &job);
            return;
        }
        long partial = plan.Items * job.PerItem;
        using var scratch = new Scratch(2 * partial * sizeof(double));
        var blocks = new Blocks<TJob> { Job = &job, PartA = (double*)scratch.Pointer, PartB = (double*)scratch.Pointer + partial };
        NativeMemory.Clear(blocks.PartA, (nuint)(2 * partial * sizeof(double)));
        ParallelFor.Run(plan.Items, plan.Threads, &BlockSums<TJob>, &blocks);
        Moments.SumBlocks(blocks.PartA, blocks.PartB, plan, job.PerItem, call->SumA, call->SumB);
        if (call->Dx != null) ParallelFor.Run(plan.Items, plan.Threads, &BlockInputGradients<TJob>, &blocks);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BlockMoments<TJob>(void* state, long start, long end) where TJob : unmanaged, IForwardJob<TJob>
    {
        var b = (Blocks<TJob>*)state;
        for (long item = start; item < end; item++)
        {
            var (row, b0, b1) = b->Job->Plan.ItemRange(item);
            b->Job->BlockMoments(row, b0, b1, b->Moments + item * b->Job->PerItem);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BlockOutputs<TJob>(void* state, long start, long end) where TJob : unmanaged, IForwardJob<TJob>
    {
        var b = (Blocks<TJob>*)state;
        for (long item = start; item < end; item++)
        {
            var (row, b0, b1) = b->Job->Plan.ItemRange(item);
            b->Job->ApplyScaleBias(row, b0, b1);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BlockSums<TJob>(void* state, long start, long end) where TJob : unmanaged, IBackwardJob<TJob>
    {
        var b = (Blocks<TJob>*)state;
        long perItem = b->Job->PerItem;
        for (long item = start; item < end; item++)
        {
            var (row, b0, b1) = b->Job->Plan.ItemRange(item);
            b->Job->ChannelGradientSums(row, b0, b1, b->PartA + item * perItem, b->PartB + item * perItem);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BlockInputGradients<TJob>(void* state, long start, long end) where TJob : unmanaged, IBackwardJob<TJob>
    {
        var b = (Blocks<TJob>*)state;
        for (long item = start; item < end; item++)
        {
            var (row, b0, b1) = b->Job->Plan.ItemRange(item);
            b->Job->InputGradient(row, b0, b1);
        }
    }

    /// <summary>A split plan's job and its partial results, which the block loops write and the merge reads.</summary>
    private struct Blocks<TJob> where TJob : unmanaged
    {
        public TJob* Job;

        /// <summary>Forward: per-block moments.</summary>
        public Moments* Moments;

        /// <summary>Backward: per-block sums A and B.</summary>
        public double* PartA, PartB;
    }
}
