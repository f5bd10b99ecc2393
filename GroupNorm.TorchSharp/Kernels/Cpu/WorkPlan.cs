using System;
using TorchSharp;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>How a <see cref="WorkPlan"/> cuts its rows (chosen from the shape, or forced by a <see cref="KernelOverride"/>).</summary>
internal enum RowStrategy
{
    /// <summary>Each row start to finish on one thread (one block per row).</summary>
    WholeRows,

    /// <summary>Every row split into several blocks, with a merge between the two phases.</summary>
    SplitRows,
}

/// <summary>
/// How one call is cut into parallel work. Work is cut into "rows": one (n, g) group for channels-first
/// tensors (D·S contiguous elements), one sample n for channels-last tensors (S positions × C channels).
/// When there are enough rows to keep every thread busy, each row is handled start to finish by one
/// thread (statistics, then output while the row is still in cache). Otherwise rows are split into
/// <see cref="Blocks"/> blocks, which the layout kernels process in two parallel phases (partial sums,
/// then output) with a small serial merge between them (<see cref="Moments.MergeBlocks"/>).
/// </summary>
internal readonly record struct WorkPlan(ChannelLayout Layout, long Rows, long RowLength, int Blocks, int Threads)
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

        // Tests fix the strategy and thread count (KernelOverride); otherwise they follow from the shape.
        var forced = KernelOverride.Current;
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
}
