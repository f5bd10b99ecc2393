using System;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using GroupNormalization.Kernels.Threading;
using TorchSharp;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>
/// How one call is cut into parallel work. Work is cut into "rows": one (n, g) group for channels-first
/// tensors (D·S contiguous elements), one sample n for channels-last tensors (S positions × C channels).
/// When there are enough rows to keep every thread busy, each row is handled start to finish by one
/// thread (statistics, then output while the row is still in cache). Otherwise rows are split into
/// <see cref="Blocks"/> blocks, processed in two parallel phases (partial sums, then output) with a small
/// serial merge between them.
/// </summary>
internal readonly unsafe record struct WorkPlan(ChannelLayout Layout, long Rows, long RowLength, int Blocks, int Threads)
{
    /// <summary>Below this many elements, waking a second thread costs more than it saves.</summary>
    private const long SerialElements = 1 << 15;

    /// <summary>The smallest block worth a parallel work item of its own.</summary>
    private const long MinBlockElements = 1 << 14;

    /// <summary>Bytes of channels-first rows reduced before their outputs are written (see <see cref="RowBatch"/>).</summary>
    private const int BatchBytes = 32 * 1024;

    /// <summary>An L1-sized piece of a channels-last sample (see <see cref="PieceRows"/>).</summary>
    private const int PieceBytes = 16 * 1024;

    /// <summary>The fewest channels-last positions per piece.</summary>
    private const long MinPieceRows = 32;

    public long Items => Rows * Blocks;

    public static WorkPlan For(GroupNormShape s, ChannelLayout layout)
    {
        // Channels-first rows are (n, g) groups of D·S elements, split by element;
        // channels-last rows are samples of S positions × C channels, split by position.
        long rows = layout == ChannelLayout.ChannelsFirst ? s.Rows : s.N;
        long rowLength = layout == ChannelLayout.ChannelsFirst ? s.GroupSize : s.S;
        long rowElements = layout == ChannelLayout.ChannelsFirst ? s.GroupSize : s.S * s.C;

        // Tests fix the strategy and thread count (ForcedPlan); otherwise they follow from the shape.
        var forced = ForcedPlan.Current;
        // libtorch's own thread count, so that torch.set_num_threads applies to these kernels too.
        int threads = forced?.Threads ?? (s.Numel < SerialElements ? 1 : Math.Max(1, torch.get_num_threads()));
        // Whole rows per thread keep each row in cache between its statistics and its output, and skip
        // the split's merge and second round of work items; they only pay off when the rows balance the
        // threads: many rows, or a multiple of the thread count (2 samples on 2 threads).
        var strategy = forced?.Strategy;
        bool split = strategy is not null
            ? strategy == RowStrategy.SplitRows && rows > 0 && rowLength > 1
            : threads > 1 && rows < 4L * threads && rows > 0 && (rows < threads || rows % threads != 0);
        int blocks = 1;
        if (split)
        {
            // Four work items per thread. A forced split ignores the size floor, so that small test shapes
            // split too, and takes at least 3 blocks, so that one block has neither end at a row's edge.
            long want = (4L * threads + rows - 1) / rows;
            long most = strategy is null ? Math.Max(1, Math.Min(rowLength, rowElements / MinBlockElements)) : rowLength;
            long least = strategy is null ? 1 : 3;
            blocks = (int)Math.Min(Math.Max(want, least), most);
        }
        var plan = new WorkPlan(layout, rows, rowLength, blocks, threads);
        forced?.Record(plan);
        return plan;
    }

    /// <summary>Block <paramref name="block"/>'s elements (channels-first) or positions (channels-last) of a row, [Start, End).</summary>
    public (long Start, long End) BlockRange(long block) =>
        (RowLength * block / Blocks, RowLength * (block + 1) / Blocks);

    /// <summary>Work item <paramref name="item"/> of a split plan: its row, and its block's range in that row.</summary>
    public (long Row, long Start, long End) ItemRange(long item)
    {
        var (start, end) = BlockRange(item % Blocks);
        return (item / Blocks, start, end);
    }

    /// <summary>Runs <paramref name="body"/> over items [0, count) of the job at <paramref name="job"/>, in parallel.</summary>
    public void ForEach(long count, delegate*<void*, long, long, void> body, void* job) => ParallelFor.Run(count, Threads, body, job);

    /// <summary>
    /// Channels-first rows handled together: first the reductions of every row in the batch, then their
    /// outputs, instead of row by row. Measured on ResNet-20's (32, 32, 16, 16)/8 (rows of 4 KiB): row by row
    /// ran at 0.42 ns per element or 0.20 depending on where the output happened to be allocated (a
    /// row's first loads came right after the previous row's stores), batches of 2 to 8 rows at 0.17
    /// whatever the addresses; the others gained up to 15%. The batch stays within L1 so that the output
    /// pass still reads from cache; rows of 32 KiB and more go one at a time.
    /// </summary>
    public static long RowBatch(long bytesPerRow) => Math.Clamp(BatchBytes / Math.Max(1, bytesPerRow), 1, 8);

    /// <summary>
    /// Channels-last positions per piece, so that a piece of <paramref name="arrays"/> tensors fits in L1;
    /// never fewer than <see cref="MinPieceRows"/>, because every piece pays a few passes over C-long
    /// coefficient arrays: with C = 1280 an L1-sized piece is 3 positions, and that overhead made the
    /// kernel 8× slower than libtorch. A piece of 32 positions still fits in L2.
    /// </summary>
    public static long PieceRows(long channels, int arrays, int elementBytes) =>
        Math.Max(MinPieceRows, PieceBytes / (arrays * elementBytes * channels));

    /// <summary>
    /// Runs a forward job: whole rows in one parallel pass, or split rows in two (each block's moments, then,
    /// after the merge into μ and r, each block's output). <paramref name="perItem"/> is the number of
    /// statistics rows one work item holds moments for.
    /// </summary>
    public void RunForward(void* job, JobPhases* phases, delegate*<void*, long, long, void> body, long perItem, double* mean, double* rstd, double eps)
    {
        if (Blocks == 1)
        {
            phases->Phase = JobPhase.WholeRows;
            ForEach(Rows, body, job);
            return;
        }
        using var partial = new Scratch(Items * perItem * sizeof(Moments));
        phases->Moments = (Moments*)partial.Pointer;
        phases->Phase = JobPhase.BlockReductions;
        ForEach(Items, body, job);
        MergeMoments(phases->Moments, perItem, mean, rstd, eps);
        phases->Phase = JobPhase.BlockElements;
        ForEach(Items, body, job);
    }

    /// <summary>
    /// Runs a backward job: whole rows in one parallel pass, or split rows in two (each block's sums, then,
    /// after the merge into the per-(n, c) sums, each block's dx when <paramref name="inputGradient"/>).
    /// <paramref name="perItem"/> is the number of channels one work item sums.
    /// </summary>
    public void RunBackward(void* job, JobPhases* phases, delegate*<void*, long, long, void> body, long perItem, double* sumA, double* sumB, bool inputGradient)
    {
        if (Blocks == 1)
        {
            phases->Phase = JobPhase.WholeRows;
            ForEach(Rows, body, job);
            return;
        }
        long partial = Items * perItem;
        using var scratch = new Scratch(2 * partial * sizeof(double));
        phases->PartA = (double*)scratch.Pointer;
        phases->PartB = phases->PartA + partial;
        NativeMemory.Clear(phases->PartA, (nuint)(2 * partial * sizeof(double)));
        phases->Phase = JobPhase.BlockReductions;
        ForEach(Items, body, job);
        MergeSums(phases->PartA, phases->PartB, perItem, sumA, sumB);
        if (!inputGradient) return;
        phases->Phase = JobPhase.BlockElements;
        ForEach(Items, body, job);
    }

    /// <summary>Merges per-block moments into each row's μ and r: entry (row, block, j) → statistics row·perItem + j.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void MergeMoments(Moments* partial, long perItem, double* mean, double* rstd, double eps)
    {
        for (long row = 0; row < Rows; row++)
        {
            for (long j = 0; j < perItem; j++)
            {
                var m = default(Moments);
                for (long k = 0; k < Blocks; k++)
                    m.Merge(partial[(row * Blocks + k) * perItem + j]);
                mean[row * perItem + j] = m.Mean;
                rstd[row * perItem + j] = GroupNormMath.Rstd(m.Variance, eps);
            }
        }
    }

    /// <summary>Adds per-block sums: entry (row, block, j) → total row·perItem + j.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void MergeSums(double* partA, double* partB, long perItem, double* sumA, double* sumB)
    {
        for (long row = 0; row < Rows; row++)
        {
            for (long j = 0; j < perItem; j++)
            {
                double a = 0, b = 0;
                for (long k = 0; k < Blocks; k++)
                {
                    long at = (row * Blocks + k) * perItem + j;
                    a += partA[at];
                    b += partB[at];
                }
                sumA[row * perItem + j] = a;
                sumB[row * perItem + j] = b;
            }
        }
    }
}

/// <summary>Unmanaged scratch memory for one work item, freed on dispose.</summary>
internal readonly unsafe struct Scratch : IDisposable
{
    public readonly void* Pointer;

    public Scratch(long bytes) => Pointer = NativeMemory.Alloc((nuint)Math.Max(bytes, 1));

    public void Dispose() => NativeMemory.Free(Pointer);
}

/// <summary>A job's phase, which its parallel body reads, and the partial results of split rows.</summary>
internal unsafe struct JobPhases
{
    public JobPhase Phase;

    /// <summary>Forward: per-block moments.</summary>
    public Moments* Moments;

    /// <summary>Backward: per-block sums A and B.</summary>
    public double* PartA, PartB;
}

/// <summary>Which phase of a job its parallel body runs.</summary>
internal enum JobPhase
{
    /// <summary>Whole rows: reductions, then the element-wise pass while the row is in cache.</summary>
    WholeRows,

    /// <summary>Split rows, first phase: each block's partial reductions.</summary>
    BlockReductions,

    /// <summary>Split rows, second phase: each block's element-wise pass, after the merge.</summary>
    BlockElements,
}
