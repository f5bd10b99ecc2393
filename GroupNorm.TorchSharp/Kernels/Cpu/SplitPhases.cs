using GroupNormalization.Kernels.Threading;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>
/// A layout kernel's forward work items, as three parallel bodies over its job: whole rows (statistics,
/// then output while the row is in cache), and for split rows each block's moments, then each block's
/// output. <see cref="SplitPhases"/> runs them in the plan's order.
/// </summary>
internal unsafe interface IForwardJob
{
    static abstract void WholeRows(void* job, long start, long end);

    static abstract void BlockMoments(void* job, long start, long end);

    static abstract void BlockOutputs(void* job, long start, long end);
}

/// <summary>A layout kernel's backward work items (<see cref="IForwardJob"/>'s counterpart: sums, then dx).</summary>
internal unsafe interface IBackwardJob
{
    static abstract void WholeRows(void* job, long start, long end);

    static abstract void BlockSums(void* job, long start, long end);

    static abstract void BlockInputGradients(void* job, long start, long end);
}

/// <summary>The partial results of split rows, which a job's block bodies write and read.</summary>
internal unsafe struct SplitBuffers
{
    /// <summary>Forward: per-block moments.</summary>
    public Moments* Moments;

    /// <summary>Backward: per-block sums A and B.</summary>
    public double* PartA, PartB;
}

/// <summary>
/// The order of a layout kernel's phases, written once for both layouts: one parallel loop over whole rows,
/// or, for a plan that splits rows, a parallel loop over blocks, the serial merge, and a second parallel
/// loop. <c>perItem</c> is how many statistics rows (forward) or channels (backward) one work item holds.
/// </summary>
internal static unsafe class SplitPhases
{
    public static void Forward<TJob>(void* job, SplitBuffers* buffers, in WorkPlan plan, long perItem, double* mean, double* rstd, double eps)
        where TJob : IForwardJob
    {
        if (plan.Blocks == 1)
        {
            ParallelFor.Run(plan.Rows, plan.Threads, &TJob.WholeRows, job);
            return;
        }
        using var partial = new Scratch(plan.Items * perItem * sizeof(Moments));
        buffers->Moments = (Moments*)partial.Pointer;
        ParallelFor.Run(plan.Items, plan.Threads, &TJob.BlockMoments, job);
        Moments.MergeBlocks(buffers->Moments, plan, perItem, mean, rstd, eps);
        ParallelFor.Run(plan.Items, plan.Threads, &TJob.BlockOutputs, job);
    }

    public static void Backward<TJob>(void* job, SplitBuffers* buffers, in WorkPlan plan, long perItem, double* sumA, double* sumB, bool inputGradient)
        where TJob : IBackwardJob
    {
        if (plan.Blocks == 1)
        {
            ParallelFor.Run(plan.Rows, plan.Threads, &TJob.WholeRows, job);
            return;
        }
        long partial = plan.Items * perItem;
        using var scratch = new Scratch(2 * partial * sizeof(double));
        buffers->PartA = (double*)scratch.Pointer;
        buffers->PartB = buffers->PartA + partial;
        System.Runtime.InteropServices.NativeMemory.Clear(buffers->PartA, (nuint)(2 * partial * sizeof(double)));
        ParallelFor.Run(plan.Items, plan.Threads, &TJob.BlockSums, job);
        Moments.SumBlocks(buffers->PartA, buffers->PartB, plan, perItem, sumA, sumB);
        if (inputGradient) ParallelFor.Run(plan.Items, plan.Threads, &TJob.BlockInputGradients, job);
    }
}
