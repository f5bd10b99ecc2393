using System;
using System.Runtime.InteropServices;
using System.Threading;
using System.Threading.Tasks;
using GroupNormalization.Kernels;
using GroupNormalization.Kernels.Cpu;
using GroupNormalization.Kernels.Threading;
using NUnit.Framework;
using TorchSharp;

namespace GroupNormalization.Tests.Kernels.Cpu;

/// <summary>
/// The fused kernels' index arithmetic on groups of more than 2³¹ elements, without allocating them:
/// the call's geometry, the work plan's rows and blocks, the batch and piece sizes, the layout check and
/// the parallel loop, each against 64-bit (or 128-bit) answers computed here. An <c>int</c> anywhere in
/// these (a cast of a row length, a product of strides) wraps and changes the answer.
/// </summary>
[TestFixture]
public sealed unsafe class IndexMathTests
{
    /// <summary>
    /// S = (2¹⁶ + 1)·2¹⁵ = 2³¹ + 2¹⁵ positions, past int in itself (a channels-last row is S positions); with
    /// C = 4 in one group a group holds 2³³ + 2¹⁷ elements.
    /// </summary>
    private const long H = (1L << 16) + 1, W = 1L << 15, S = H * W;

    private const long N = 3, C = 4;

    private static readonly long[] Shape = { N, C, H, W };

    [Test]
    public void ValidateGivesTheExactGeometryOfAHugeInput()
    {
        // A meta tensor has a shape and no data.
        using var x = torch.empty(Shape, device: torch.META);
        var shape = GroupNormArguments.Validate(x, 1, null, null, 1e-5);
        Assert.Multiple(() =>
        {
            Assert.That(shape.S, Is.EqualTo(S), "S");
            Assert.That(shape.GroupSize, Is.EqualTo(C * S), "D·S");
            Assert.That(shape.S, Is.GreaterThan(int.MaxValue), "S must not fit an int");
            Assert.That(shape.GroupSize, Is.GreaterThan(uint.MaxValue), "the group must not fit 32 bits");
            Assert.That(shape.Rows, Is.EqualTo(N), "rows");
            Assert.That(shape.Numel, Is.EqualTo(N * C * S), "numel");
        });
    }

    [Test]
    public void WorkPlanCoversAHugeRowExactly([Values] bool channelsLast)
    {
        var layout = channelsLast ? ChannelLayout.ChannelsLast : ChannelLayout.ChannelsFirst;
        var shape = new GroupNormShape(N, C, 1, S);
        int saved = torch.get_num_threads();
        WorkPlan plan;
        try
        {
            // Four threads and three rows: rows are split into blocks (⌈16 / 3⌉ = 6 of them).
            torch.set_num_threads(4);
            plan = WorkPlan.For(shape, layout);
        }
        finally
        {
            torch.set_num_threads(saved);
        }

        long rowLength = layout == ChannelLayout.ChannelsFirst ? C * S : S;
        Assert.Multiple(() =>
        {
            Assert.That(plan.Rows, Is.EqualTo(N), "rows: (n, g) groups or samples");
            Assert.That(plan.RowLength, Is.EqualTo(rowLength), "row length");
            Assert.That(plan.Blocks, Is.EqualTo(6), "blocks per row");
            Assert.That(plan.Items, Is.EqualTo(N * 6), "work items");
        });
        AssertItemsTileTheRows(plan);
    }

    /// <summary>A plan as large as the kernels could meet: rows of 2⁴⁰ elements, 64 blocks.</summary>
    [Test]
    public void ItemRangesTileRowsOfTwoToTheFortyElements()
    {
        AssertItemsTileTheRows(new WorkPlan(ChannelLayout.ChannelsFirst, 5, (1L << 40) + 3, 64, 16));
    }

    /// <summary>
    /// Every work item's (row, start, end) against Int128 arithmetic: blocks of one row are contiguous, start
    /// at 0, end at the row's length, and differ in size by at most one element.
    /// </summary>
    private static void AssertItemsTileTheRows(WorkPlan plan)
    {
        Assert.Multiple(() =>
        {
            for (long item = 0; item < plan.Items; item++)
            {
                long block = item % plan.Blocks;
                var expectedStart = (Int128)plan.RowLength * block / plan.Blocks;
                var expectedEnd = (Int128)plan.RowLength * (block + 1) / plan.Blocks;
                var (row, start, end) = plan.ItemRange(item);
                Assert.That(row, Is.EqualTo(item / plan.Blocks), $"item {item}: row");
                Assert.That((Int128)start, Is.EqualTo(expectedStart), $"item {item}: first element");
                Assert.That((Int128)end, Is.EqualTo(expectedEnd), $"item {item}: end");
                Assert.That(plan.BlockRange(block), Is.EqualTo((start, end)), $"item {item}: BlockRange and ItemRange agree");
            }
            Assert.That(plan.ItemRange(plan.Blocks - 1).End, Is.EqualTo(plan.RowLength), "the last block ends at the row's end");
            long size = plan.RowLength / plan.Blocks;
            var (s0, e0) = plan.BlockRange(0);
            Assert.That(e0 - s0, Is.InRange(size, size + 1), "block size");
        });
    }

    /// <summary>A row of 2³² + 1 bytes is far past the batch limit: one row per batch (an int would see 1 byte, and batch 8).</summary>
    [Test]
    public void RowBatchOfAHugeRowIsOne()
    {
        Assert.Multiple(() =>
        {
            Assert.That(WorkPlan.RowBatch((1L << 32) + 1), Is.EqualTo(1));
            Assert.That(WorkPlan.RowBatch(C * S * sizeof(float)), Is.EqualTo(1));
        });
    }

    /// <summary>2³² + 1 channels make any piece the minimum of 32 positions (an int would see one channel and 4,096).</summary>
    [Test]
    public void PieceRowsOfHugeChannelCountsIsTheMinimum()
    {
        Assert.That(WorkPlan.PieceRows((1L << 32) + 1, 1, sizeof(float)), Is.EqualTo(32));
    }

    /// <summary>
    /// Dense-layout detection multiplies sizes into the expected strides: with planes of 2³¹ + 2¹⁵ positions
    /// those products pass 2³¹; a stride equal to the product wrapped to 32 bits must not pass.
    /// </summary>
    [Test]
    public void DenseLayoutOfHugeShapesUsesSixtyFourBitStrides()
    {
        long[] shape = { N, C, H, W };
        long[] first = { C * S, S, W, 1 };
        long[] last = { S * C, 1, W * C, C };
        long[] wrapped = { unchecked((int)(C * S)), S, W, 1 };
        long[] shape5 = { 2, C, 2, H, W };
        long[] first5 = { C * 2 * S, 2 * S, S, W, 1 };
        Assert.Multiple(() =>
        {
            Assert.That(TensorMemory.DenseLayout(shape, first), Is.EqualTo(ChannelLayout.ChannelsFirst), "row-major");
            Assert.That(TensorMemory.DenseLayout(shape, last), Is.EqualTo(ChannelLayout.ChannelsLast), "channels-last");
            Assert.That(TensorMemory.DenseLayout(shape, wrapped), Is.Null, "a sample stride wrapped to 32 bits");
            Assert.That(TensorMemory.DenseLayout(shape5, first5), Is.EqualTo(ChannelLayout.ChannelsFirst), "5-d row-major");
        });
    }

    /// <summary>
    /// The parallel loop over 2³² + 7 items, on both backends: the chunks handed to the body add up to every
    /// item exactly once (their lengths sum to the count, and the last one ends at it). The body only counts.
    /// A wrapped range would lose items, and the caller would wait for them for ever: hence the time limit,
    /// and a tally in native memory that outlives a loop left running.
    /// </summary>
    [Test]
    public void ParallelForSplitsMoreThanTwoToTheThirtyTwoItems([Values] bool openMp)
    {
        const long count = (1L << 32) + 7;
        var tally = (Tally*)NativeMemory.AllocZeroed((nuint)sizeof(Tally));
        tally->MinStart = long.MaxValue;
        var backend = openMp ? ParallelBackend.OpenMp : ParallelBackend.KernelThreads;
        var run = Task.Run(() =>
        {
            using (KernelOverride.Force(backend: backend))
                ParallelFor.Run(count, 2, &Count, tally);
        });
        if (!run.Wait(TimeSpan.FromSeconds(60)))
            Assert.Fail($"ParallelFor.Run over {count} items did not return within 60 s; {Volatile.Read(ref tally->Items)} items had run");
        var (items, maxEnd, minStart) = (tally->Items, tally->MaxEnd, tally->MinStart);
        NativeMemory.Free(tally);
        Assert.Multiple(() =>
        {
            Assert.That(items, Is.EqualTo(count), "items run");
            Assert.That(maxEnd, Is.EqualTo(count), "end of the last chunk");
            Assert.That(minStart, Is.Zero, "start of the first chunk");
        });
    }

    private struct Tally
    {
        public long Items;
        public long MaxEnd;
        public long MinStart;
    }

    private static void Count(void* state, long start, long end)
    {
        var t = (Tally*)state;
        Interlocked.Add(ref t->Items, end - start);
        long seen;
        while (end > (seen = Volatile.Read(ref t->MaxEnd)) && Interlocked.CompareExchange(ref t->MaxEnd, end, seen) != seen) { }
        while (start < (seen = Volatile.Read(ref t->MinStart)) && Interlocked.CompareExchange(ref t->MinStart, start, seen) != seen) { }
    }
}
