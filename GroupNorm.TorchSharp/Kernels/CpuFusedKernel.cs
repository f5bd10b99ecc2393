using System;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using GroupNormalization.Kernels.Threading;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Kernels;

/// <summary>
/// Fused, multi-threaded GroupNorm for float32 and float64 CPU tensors, reading and writing tensor memory
/// directly. Formulas: <see cref="GroupNormMath"/>; inner loops: <see cref="CpuFusedLoops"/>.
/// <para>
/// Work is cut into "rows": one (n, g) group for channels-first tensors (D·S contiguous elements), one
/// sample n for channels-last tensors (S positions × C channels). When there are enough rows to keep
/// every thread busy, each row is handled start to finish by one thread (statistics, then output while
/// the row is still in cache). Otherwise rows are split into K blocks, processed in two parallel phases
/// (partial statistics, then output) with a small serial merge between them.
/// </para>
/// <para>
/// Forward: one pass sums deviations from a shift (the mean of the first piece) into float64
/// (<see cref="GroupNormMath.ShiftedMoments"/>; a second pass only when the shift proves far from μ);
/// then y = (x − μhi)·(r·γ) + (β − μlo·r·γ). Backward: per-(n, c) centred sums A, B in float64, then
/// dx = a·dy + b·(x − μ) + k. Only y or dx is allocated at input size.
/// </para>
/// </summary>
internal static unsafe class CpuFusedKernel
{
    /// <summary>An L1-sized piece: the channels-last tile, and the sample whose mean becomes its statistics' shift.</summary>
    private const int SegmentBytes = 16 * 1024;

    /// <summary>
    /// Elements whose mean becomes a contiguous row's statistics' shift. Any value near the mean serves
    /// (<see cref="GroupNormMath.ShiftedMoments"/>), and a far one is caught and summed again; a larger sample
    /// only made rows that fit in cache (ResNet-20's 512–2,048 elements) read their data three times.
    /// </summary>
    private const int ShiftSample = 256;

    /// <summary>Bytes of channels-first rows reduced before their outputs are written (see <see cref="RowBatch{T}"/>).</summary>
    private const int BatchBytes = 32 * 1024;

    /// <summary>Up to this many rows, inference keeps its statistics on the stack.</summary>
    private const int StackRows = 256;

    /// <summary>Below this many elements, waking a second thread costs more than it saves.</summary>
    private const long SerialElements = 1 << 15;

    /// <summary>The fewest channels-last positions per piece (see <see cref="PieceRows{T}"/>).</summary>
    private const long MinPieceRows = 32;

    /// <summary>The smallest block worth a parallel work item of its own.</summary>
    private const long MinBlockElements = 1 << 14;

    public static bool Supports(Tensor x) =>
        x.device_type == DeviceType.CPU && x.dtype is ScalarType.Float32 or ScalarType.Float64;

    /// <summary>
    /// y for a validated input; the per-(n, g) statistics go to caller-owned memory, <paramref name="mean"/>
    /// and <paramref name="rstd"/> of <see cref="GroupNormShape.Rows"/> entries each (scratch memory for
    /// inference, the autograd context's array when backward will need them).
    /// </summary>
    public static Tensor Forward(Tensor x, Tensor? weight, Tensor? bias, GroupNormShape shape, double eps, double* mean, double* rstd)
    {
        var layout = TensorMemory.DenseLayout(x);
        using var denseCopy = layout is null ? x.contiguous() : null;
        var src = denseCopy ?? x;
        // Parameters are almost always contiguous already; asking is cheaper than a new handle per call.
        var w = TensorMemory.ContiguousOrSelf(weight);
        var b = TensorMemory.ContiguousOrSelf(bias);
        try
        {
            var y = torch.empty_like(src);
            var plan = Plan.For(shape, layout ?? ChannelLayout.ChannelsFirst);
            if (src.dtype == ScalarType.Float32)
                ForwardJob<float>.Run(new ForwardJob<float>(src, y, w, b, mean, rstd, shape, eps, plan));
            else
                ForwardJob<double>.Run(new ForwardJob<double>(src, y, w, b, mean, rstd, shape, eps, plan));
            GC.KeepAlive(src);
            GC.KeepAlive(w);
            GC.KeepAlive(b);
            return y;
        }
        finally
        {
            if (!ReferenceEquals(w, weight)) w?.Dispose();
            if (!ReferenceEquals(b, bias)) b?.Dispose();
        }
    }

    /// <summary>Forward without a graph: the statistics live on the stack, or in scratch memory for many rows.</summary>
    public static Tensor Infer(Tensor x, Tensor? weight, Tensor? bias, GroupNormShape shape, double eps)
    {
        long rows = shape.Rows;
        if (rows <= StackRows)
        {
            double* stack = stackalloc double[(int)(2 * rows)];
            return Forward(x, weight, bias, shape, eps, stack, stack + rows);
        }
        using var scratch = new Scratch(2 * rows * sizeof(double));
        double* mean = (double*)scratch.Pointer;
        return Forward(x, weight, bias, shape, eps, mean, mean + rows);
    }

    /// <summary>The gradients <paramref name="need"/> asks for, from forward's statistics.</summary>
    public static (Tensor? Dx, Tensor? Dweight, Tensor? Dbias) Backward(
        Tensor dy, Tensor x, double* mean, double* rstd, Tensor? weight, GroupNormShape shape, GradientRequest need)
    {
        var xLayout = TensorMemory.DenseLayout(x);
        var layout = xLayout ?? ChannelLayout.ChannelsFirst;
        using var xCopy = xLayout is null ? TensorMemory.DenseCopy(x, layout) : null;
        using var dyCopy = TensorMemory.CopyUnlessIn(dy, layout);
        var xd = xCopy ?? x;
        var dyd = dyCopy ?? dy;
        var w = TensorMemory.ContiguousOrSelf(weight);

        var dx = need.Input ? torch.empty_like(xd) : null;
        var dweight = need.Weight ? torch.empty(shape.C, x.dtype, torch.CPU) : null;
        var dbias = need.Bias ? torch.empty(shape.C, x.dtype, torch.CPU) : null;

        var plan = Plan.For(shape, layout);
        if (x.dtype == ScalarType.Float32)
            BackwardJob<float>.Run(new BackwardJob<float>(xd, dyd, dx, w, mean, rstd, dweight, dbias, shape, plan));
        else
            BackwardJob<double>.Run(new BackwardJob<double>(xd, dyd, dx, w, mean, rstd, dweight, dbias, shape, plan));

        GC.KeepAlive(xd);
        GC.KeepAlive(dyd);
        GC.KeepAlive(w);
        if (!ReferenceEquals(w, weight)) w?.Dispose();
        return (dx, dweight, dbias);
    }

    /// <summary>How one call is cut into parallel work.</summary>
    private readonly record struct Plan(ChannelLayout Layout, long Rows, long RowLength, int Blocks, int Threads)
    {
        public long Items => Rows * Blocks;

        public static Plan For(GroupNormShape s, ChannelLayout layout)
        {
            // Channels-first rows are (n, g) groups of D·S elements, split by element;
            // channels-last rows are samples of S positions × C channels, split by position.
            long rows = layout == ChannelLayout.ChannelsFirst ? s.Rows : s.N;
            long rowLength = layout == ChannelLayout.ChannelsFirst ? s.GroupSize : s.S;
            long rowElements = layout == ChannelLayout.ChannelsFirst ? s.GroupSize : s.S * s.C;

            // libtorch's own thread count, so that torch.set_num_threads applies to these kernels too.
            int threads = s.Numel < SerialElements ? 1 : Math.Max(1, torch.get_num_threads());
            int blocks = 1;
            // Whole rows per thread keep each row in cache between its statistics and its output, and skip
            // the split's merge and second round of work items; they only pay off when the rows balance the
            // threads: many rows, or a multiple of the thread count (2 samples on 2 threads).
            if (threads > 1 && rows < 4L * threads && rows > 0 && (rows < threads || rows % threads != 0))
            {
                long want = (4L * threads + rows - 1) / rows;
                long most = Math.Max(1, Math.Min(rowLength, rowElements / MinBlockElements));
                blocks = (int)Math.Clamp(want, 1, most);
            }
            return new Plan(layout, rows, rowLength, blocks, threads);
        }

        public (long Start, long End) BlockRange(long block) =>
            (RowLength * block / Blocks, RowLength * (block + 1) / Blocks);

        /// <summary>Runs <paramref name="body"/> over items [0, count) of the job at <paramref name="job"/>, in parallel.</summary>
        public void ForEach(long count, delegate*<void*, long, long, void> body, void* job) => ParallelFor.Run(count, Threads, body, job);
    }

    /// <summary>
    /// μ split as in <see cref="CpuFusedLoops.Split{T}"/>, with lo handed back in float64: loops form
    /// x − hi, which is exact near the mean, and the caller folds lo into a per-channel constant.
    /// </summary>
    private static (T Hi, double Lo) SplitMean<T>(double mean) where T : unmanaged
    {
        var (hi, lo) = CpuFusedLoops.Split<T>(mean);
        return (hi, CpuFusedLoops.ToDouble(lo));
    }

    /// <summary>Writes the split of <paramref name="value"/> into hi[0 .. d) and lo[0 .. d), one group's channels.</summary>
    private static void FillSplit<T>(double value, T* hi, T* lo, long d) where T : unmanaged
    {
        var (h, l) = CpuFusedLoops.Split<T>(value);
        new Span<T>(hi, (int)d).Fill(h);
        new Span<T>(lo, (int)d).Fill(l);
    }

    /// <summary>The output's per-channel constants: y = (x − μhi)·scale + shift, with shift = β − μlo·scale.</summary>
    private static (T Scale, T Shift) OutputCoefficients<T>(double rstd, double lo, T* w, T* b, long c)
        where T : unmanaged
    {
        T scale = CpuFusedLoops.FromDouble<T>(w == null ? rstd : rstd * CpuFusedLoops.ToDouble(w[c]));
        double beta = b == null ? 0 : CpuFusedLoops.ToDouble(b[c]);
        return (scale, CpuFusedLoops.FromDouble<T>(beta - lo * CpuFusedLoops.ToDouble(scale)));
    }

    /// <summary>
    /// Moments of a contiguous span in one pass (see <see cref="GroupNormMath.ShiftedMoments"/>), shifted by
    /// the mean of its first segment; a second pass only when that shift turns out far from the mean.
    /// </summary>
    private static Moments SpanMoments<T>(T* p, long length) where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (length == 0) return default;
        long first = Math.Min(ShiftSample, length);
        var (hi, lo) = CpuFusedLoops.Split<T>(CpuFusedLoops.RoughSum(p, first) / first);
        var (dev, sq) = CpuFusedLoops.SumDeviations(p, length, hi, lo);
        if (!GroupNormMath.ShiftWasClose(length, dev, sq))
        {
            (hi, lo) = CpuFusedLoops.Split<T>(GroupNormMath.ShiftedMoments(length, Shift(hi, lo), dev, sq).Mean);
            (dev, sq) = CpuFusedLoops.SumDeviations(p, length, hi, lo);
        }
        return GroupNormMath.ShiftedMoments(length, Shift(hi, lo), dev, sq);

        // The shift exactly as the loops subtract it.
        static double Shift(T hi, T lo) => CpuFusedLoops.ToDouble(hi) + CpuFusedLoops.ToDouble(lo);
    }

    /// <summary>Unmanaged scratch memory for one work item, freed on dispose.</summary>
    private readonly struct Scratch : IDisposable
    {
        public readonly void* Pointer;

        public Scratch(long bytes) => Pointer = NativeMemory.Alloc((nuint)Math.Max(bytes, 1));

        public void Dispose() => NativeMemory.Free(Pointer);
    }

    private static T* PointerOrNull<T>(Tensor? t) where T : unmanaged => t is null ? null : TensorMemory.Pointer<T>(t);

    /// <summary>
    /// Channels-first rows handled together: first the reductions of every row in the batch, then their
    /// outputs, instead of row by row. Measured on ResNet-20's (32, 32, 16, 16)/8 (rows of 4 KiB): row by row
    /// ran at 0.42 ns per element or 0.20 depending on where the output happened to be allocated (a
    /// row's first loads came right after the previous row's stores), batches of 2 to 8 rows at 0.17
    /// whatever the addresses; the others gained up to 15%. The batch stays within L1 so that the output
    /// pass still reads from cache; rows of 32 KiB and more go one at a time, as before.
    /// </summary>
    private static long RowBatch<T>(long elementsPerRow) where T : unmanaged =>
        Math.Clamp(BatchBytes / Math.Max(1, elementsPerRow * sizeof(T)), 1, 8);

    /// <summary>
    /// Channels-last positions per piece, so that a piece of <paramref name="arrays"/> tensors fits in L1;
    /// never fewer than <see cref="MinPieceRows"/>, because every piece pays a few passes over C-long
    /// coefficient arrays: with C = 1280 an L1-sized piece is 3 positions, and that overhead made the
    /// kernel 8× slower than libtorch. A piece of 32 positions still fits in L2.
    /// </summary>
    private static long PieceRows<T>(long channels, int arrays) where T : unmanaged =>
        Math.Max(MinPieceRows, SegmentBytes / (arrays * sizeof(T) * channels));

    // ---- forward -----------------------------------------------------------------------------------

    // Jobs are unmanaged structs on the caller's stack, and their parallel bodies static functions of
    // (job, start, end): a kernel call allocates nothing on the managed heap. The bodies are compiled fully
    // optimised from the first call (AggressiveOptimization): as tier-0 code they ran a training run's first
    // steps several times slower.

    private struct ForwardJob<T> where T : unmanaged, IFloatingPointIeee754<T>
    {
        private readonly T* _x, _y, _w, _b;
        private readonly double* _mean, _rstd;
        private readonly long _c, _g, _d, _s;
        private readonly double _eps;
        private readonly Plan _plan;
        private Moments* _partial;

        public ForwardJob(Tensor x, Tensor y, Tensor? w, Tensor? b, double* mean, double* rstd, GroupNormShape s, double eps, Plan plan)
        {
            _x = TensorMemory.Pointer<T>(x);
            _y = TensorMemory.Pointer<T>(y);
            _w = PointerOrNull<T>(w);
            _b = PointerOrNull<T>(b);
            _mean = mean;
            _rstd = rstd;
            (_c, _g, _d, _s) = (s.C, s.G, s.D, s.S);
            _eps = eps;
            _plan = plan;
        }

        private readonly bool ChannelsFirst => _plan.Layout == ChannelLayout.ChannelsFirst;

        public static void Run(ForwardJob<T> job)
        {
            var plan = job._plan;
            bool first = job.ChannelsFirst;
            if (plan.Blocks == 1)
            {
                plan.ForEach(plan.Rows, first ? &FusedGroups : &FusedSamples, &job);
                return;
            }

            // Per-block statistics: one Moments per block (channels-first) or per block and group (channels-last).
            long perItem = first ? 1 : job._g;
            using var partial = new Scratch(plan.Items * perItem * sizeof(Moments));
            job._partial = (Moments*)partial.Pointer;
            plan.ForEach(plan.Items, first ? &GroupBlockMoments : &SampleBlockMoments, &job);
            job.MergeBlocks(perItem);
            plan.ForEach(plan.Items, first ? &GroupBlockOutput : &SampleBlockOutput, &job);
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static void FusedGroups(void* job, long start, long end)
        {
            var j = (ForwardJob<T>*)job;
            long batch = RowBatch<T>(j->_plan.RowLength);
            for (long r0 = start; r0 < end; r0 += batch)
            {
                long r1 = Math.Min(end, r0 + batch);
                for (long r = r0; r < r1; r++) j->SetStatistics(r, SpanMoments(j->_x + r * j->_plan.RowLength, j->_plan.RowLength));
                for (long r = r0; r < r1; r++) j->WriteGroup(r, 0, j->_plan.RowLength);
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static void FusedSamples(void* job, long start, long end)
        {
            for (long n = start; n < end; n++) ((ForwardJob<T>*)job)->FusedSample(n);
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static void GroupBlockMoments(void* job, long start, long end)
        {
            for (long item = start; item < end; item++) ((ForwardJob<T>*)job)->GroupBlockMoments(item);
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static void GroupBlockOutput(void* job, long start, long end)
        {
            for (long item = start; item < end; item++) ((ForwardJob<T>*)job)->GroupBlockOutput(item);
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static void SampleBlockMoments(void* job, long start, long end)
        {
            for (long item = start; item < end; item++) ((ForwardJob<T>*)job)->SampleBlockMoments(item);
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static void SampleBlockOutput(void* job, long start, long end)
        {
            for (long item = start; item < end; item++) ((ForwardJob<T>*)job)->SampleBlockOutput(item);
        }

        private void MergeBlocks(long perItem)
        {
            for (long row = 0; row < _plan.Rows; row++)
            {
                for (long j = 0; j < perItem; j++)
                {
                    var m = default(Moments);
                    for (long k = 0; k < _plan.Blocks; k++)
                        m.Merge(_partial[(row * _plan.Blocks + k) * perItem + j]);
                    SetStatistics(row * perItem + j, m);
                }
            }
        }

        private void SetStatistics(long ng, in Moments m)
        {
            _mean[ng] = m.Mean;
            _rstd[ng] = GroupNormMath.Rstd(m.Variance, _eps);
        }

        // Channels-first: row r is group (n, g), D·S contiguous elements starting at r·D·S.

        private void GroupBlockMoments(long item)
        {
            long r = item / _plan.Blocks;
            var (start, end) = _plan.BlockRange(item % _plan.Blocks);
            _partial[item] = SpanMoments(_x + r * _plan.RowLength + start, end - start);
        }

        private void GroupBlockOutput(long item)
        {
            var (start, end) = _plan.BlockRange(item % _plan.Blocks);
            WriteGroup(item / _plan.Blocks, start, end);
        }

        private void WriteGroup(long r, long start, long end)
        {
            long g = r % _g;
            T* xr = _x + r * _plan.RowLength, yr = _y + r * _plan.RowLength;
            var (hi, lo) = SplitMean<T>(_mean[r]);
            double rs = _rstd[r];
            // One division per call: with 7x7 planes, a division per channel cost as much as the arithmetic.
            for (long pos = start, local = start / _s; pos < end; local++)
            {
                long c = g * _d + local;
                long stop = Math.Min(end, (local + 1) * _s);
                var (scale, shift) = OutputCoefficients(rs, lo, _w, _b, c);
                CpuFusedLoops.Normalize(xr + pos, yr + pos, stop - pos, hi, scale, shift);
                pos = stop;
            }
        }

        // Channels-last: row n is a sample of S positions × C channels starting at n·S·C.

        private void FusedSample(long n)
        {
            using (var scratch = new Scratch(_g * sizeof(Moments)))
            {
                var groups = new Span<Moments>(scratch.Pointer, (int)_g);
                groups.Clear();
                SampleMoments(n, 0, _s, groups);
                for (long g = 0; g < _g; g++) SetStatistics(n * _g + g, groups[(int)g]);
            }
            WriteSample(n, 0, _s);
        }

        private void SampleBlockMoments(long item)
        {
            var (start, end) = _plan.BlockRange(item % _plan.Blocks);
            var slice = new Span<Moments>(_partial + item * _g, (int)_g);
            slice.Clear();
            SampleMoments(item / _plan.Blocks, start, end, slice);
        }

        private void SampleBlockOutput(long item)
        {
            var (start, end) = _plan.BlockRange(item % _plan.Blocks);
            WriteSample(item / _plan.Blocks, start, end);
        }

        /// <summary>
        /// Per-group moments of positions [p0, p1) of sample n, merged into <paramref name="groups"/>, in one
        /// pass over x (see <see cref="GroupNormMath.ShiftedMoments"/>); the shifts are the groups' means
        /// over the first piece.
        /// </summary>
        private void SampleMoments(long n, long p0, long p1, Span<Moments> groups)
        {
            long c = _c;
            T* xs = _x + n * _s * c;
            long pieceRows = PieceRows<T>(c, 1);
            using var scratch = new Scratch(3 * c * sizeof(double) + 2 * c * sizeof(T));
            double* shift = (double*)scratch.Pointer, dev = shift + c, sq = dev + c;
            T* shiftHi = (T*)(sq + c), shiftLo = shiftHi + c;

            long first = Math.Min(pieceRows, p1 - p0);
            new Span<double>(shift, (int)c).Clear();
            CpuFusedLoops.AccumulateColumns(xs + p0 * c, first, c, shift);
            for (long g = 0; g < _g; g++)
            {
                double sum = 0;
                for (long j = g * _d; j < (g + 1) * _d; j++) sum += shift[j];
                SetShift(g, sum / (first * _d), shift, shiftHi, shiftLo);
            }

            double count = (p1 - p0) * _d;
            AccumulateDeviations();
            bool again = false;
            for (long g = 0; g < _g; g++)
            {
                var (sd, ssq) = GroupSums(g, dev, sq);
                if (GroupNormMath.ShiftWasClose(count, sd, ssq)) continue;
                SetShift(g, GroupNormMath.ShiftedMoments(count, shift[g * _d], sd, ssq).Mean, shift, shiftHi, shiftLo);
                again = true;
            }
            if (again) AccumulateDeviations();

            for (long g = 0; g < _g; g++)
            {
                var (sd, ssq) = GroupSums(g, dev, sq);
                groups[(int)g].Merge(GroupNormMath.ShiftedMoments(count, shift[g * _d], sd, ssq));
            }

            void AccumulateDeviations()
            {
                new Span<double>(dev, (int)(2 * c)).Clear();
                for (long q = p0; q < p1; q += pieceRows)
                    CpuFusedLoops.AccumulateColumnDeviations(xs + q * c, Math.Min(pieceRows, p1 - q), c, shiftHi, shiftLo, dev, sq);
            }
        }

        private void SetShift(long g, double value, double* shift, T* hi, T* lo)
        {
            new Span<double>(shift + g * _d, (int)_d).Fill(value);
            FillSplit(value, hi + g * _d, lo + g * _d, _d);
        }

        private (double Dev, double SqDev) GroupSums(long g, double* dev, double* sq)
        {
            double sd = 0, ssq = 0;
            for (long j = g * _d; j < (g + 1) * _d; j++)
            {
                sd += dev[j];
                ssq += sq[j];
            }
            return (sd, ssq);
        }

        private void WriteSample(long n, long p0, long p1)
        {
            long c = _c;
            T* xs = _x + n * _s * c, ys = _y + n * _s * c;
            using var scratch = new Scratch(3 * c * sizeof(T));
            T* hi = (T*)scratch.Pointer, scale = hi + c, shift = scale + c;
            for (long g = 0; g < _g; g++)
            {
                long ng = n * _g + g;
                var (h, l) = SplitMean<T>(_mean[ng]);
                for (long j = g * _d; j < (g + 1) * _d; j++)
                {
                    hi[j] = h;
                    (scale[j], shift[j]) = OutputCoefficients(_rstd[ng], l, _w, _b, j);
                }
            }
            long pieceRows = PieceRows<T>(c, 2);
            for (long q = p0; q < p1; q += pieceRows)
                CpuFusedLoops.NormalizeColumns(xs + q * c, ys + q * c, Math.Min(pieceRows, p1 - q), c, hi, scale, shift);
        }
    }

    // ---- backward ----------------------------------------------------------------------------------

    private struct BackwardJob<T> where T : unmanaged, IFloatingPointIeee754<T>
    {
        private readonly T* _x, _dy, _dx, _w, _dw, _db;
        private readonly double* _mean, _rstd;
        private readonly long _n, _c, _g, _d, _s;
        private readonly Plan _plan;

        // Per-(n, c) sums A = Σ dy and B = Σ dy·(x − μ); per-block partial sums when rows are split.
        private double* _sumA, _sumB, _partA, _partB;

        public BackwardJob(Tensor x, Tensor dy, Tensor? dx, Tensor? w, double* mean, double* rstd, Tensor? dw, Tensor? db, GroupNormShape s, Plan plan)
        {
            _x = TensorMemory.Pointer<T>(x);
            _dy = TensorMemory.Pointer<T>(dy);
            _dx = PointerOrNull<T>(dx);
            _w = PointerOrNull<T>(w);
            _dw = PointerOrNull<T>(dw);
            _db = PointerOrNull<T>(db);
            _mean = mean;
            _rstd = rstd;
            (_n, _c, _g, _d, _s) = (s.N, s.C, s.G, s.D, s.S);
            _plan = plan;
        }

        private readonly bool ChannelsFirst => _plan.Layout == ChannelLayout.ChannelsFirst;

        public static void Run(BackwardJob<T> job)
        {
            var plan = job._plan;
            bool first = job.ChannelsFirst;
            long nc = job._n * job._c;
            // Channels-first blocks hold sums for the D channels of their group; channels-last blocks for all C.
            long perItem = first ? job._d : job._c;
            long partial = plan.Blocks == 1 ? 0 : plan.Items * perItem;
            using var scratch = new Scratch((2 * nc + 2 * partial) * sizeof(double));
            job._sumA = (double*)scratch.Pointer;
            job._sumB = job._sumA + nc;
            job._partA = job._sumB + nc;
            job._partB = job._partA + partial;

            if (plan.Blocks == 1)
            {
                plan.ForEach(plan.Rows, first ? &FusedGroups : &FusedSamples, &job);
            }
            else
            {
                new Span<double>(job._partA, (int)(2 * partial)).Clear();
                plan.ForEach(plan.Items, first ? &GroupBlockSums : &SampleBlockSums, &job);
                job.MergeBlocks(perItem);
                if (job._dx != null) plan.ForEach(plan.Items, first ? &GroupBlockInputGradient : &SampleBlockInputGradient, &job);
            }
            job.ParameterGradients();
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static void FusedGroups(void* job, long start, long end)
        {
            var j = (BackwardJob<T>*)job;
            long len = j->_plan.RowLength, d = j->_d;
            long batch = RowBatch<T>(2 * len);
            for (long r0 = start; r0 < end; r0 += batch)
            {
                long r1 = Math.Min(end, r0 + batch);
                new Span<double>(j->_sumA + r0 * d, (int)((r1 - r0) * d)).Clear();
                new Span<double>(j->_sumB + r0 * d, (int)((r1 - r0) * d)).Clear();
                for (long r = r0; r < r1; r++) j->GroupSums(r, 0, len, j->_sumA + r * d, j->_sumB + r * d);
                if (j->_dx == null) continue;
                for (long r = r0; r < r1; r++) j->GroupInputGradient(r, 0, len);
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static void FusedSamples(void* job, long start, long end)
        {
            for (long n = start; n < end; n++) ((BackwardJob<T>*)job)->FusedSample(n);
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static void GroupBlockSums(void* job, long start, long end)
        {
            for (long item = start; item < end; item++) ((BackwardJob<T>*)job)->GroupBlockSums(item);
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static void GroupBlockInputGradient(void* job, long start, long end)
        {
            for (long item = start; item < end; item++) ((BackwardJob<T>*)job)->GroupBlockInputGradient(item);
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static void SampleBlockSums(void* job, long start, long end)
        {
            for (long item = start; item < end; item++) ((BackwardJob<T>*)job)->SampleBlockSums(item);
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static void SampleBlockInputGradient(void* job, long start, long end)
        {
            for (long item = start; item < end; item++) ((BackwardJob<T>*)job)->SampleBlockInputGradient(item);
        }

        private void MergeBlocks(long perItem)
        {
            for (long row = 0; row < _plan.Rows; row++)
            {
                for (long j = 0; j < perItem; j++)
                {
                    double a = 0, b = 0;
                    for (long k = 0; k < _plan.Blocks; k++)
                    {
                        long at = (row * _plan.Blocks + k) * perItem + j;
                        a += _partA[at];
                        b += _partB[at];
                    }
                    // Channels-first row r = (n, g) owns sums r·D .. r·D + D − 1; channels-last row n owns n·C .. n·C + C − 1.
                    _sumA[row * perItem + j] = a;
                    _sumB[row * perItem + j] = b;
                }
            }
        }

        private void ParameterGradients()
        {
            if (_dw == null && _db == null) return;
            for (long c = 0, g = 0; c < _c; c++)
            {
                if (c == (g + 1) * _d) g++;
                double dw = 0, db = 0;
                for (long n = 0; n < _n; n++)
                {
                    dw += _rstd[n * _g + g] * _sumB[n * _c + c];
                    db += _sumA[n * _c + c];
                }
                if (_dw != null) _dw[c] = CpuFusedLoops.FromDouble<T>(dw);
                if (_db != null) _db[c] = CpuFusedLoops.FromDouble<T>(db);
            }
        }

        private double Gamma(long c) => _w == null ? 1.0 : CpuFusedLoops.ToDouble(_w[c]);

        // Channels-first: group r = (n, g); its channels' sums live at r·D .. r·D + D − 1 (= n·C + g·D + j).

        private void GroupBlockSums(long item)
        {
            var (start, end) = _plan.BlockRange(item % _plan.Blocks);
            GroupSums(item / _plan.Blocks, start, end, _partA + item * _d, _partB + item * _d);
        }

        private void GroupBlockInputGradient(long item)
        {
            var (start, end) = _plan.BlockRange(item % _plan.Blocks);
            GroupInputGradient(item / _plan.Blocks, start, end);
        }

        /// <summary>Adds the sums of elements [start, end) of group r into per-channel slots a[j], b[j].</summary>
        private void GroupSums(long r, long start, long end, double* a, double* b)
        {
            T* xr = _x + r * _plan.RowLength, gr = _dy + r * _plan.RowLength;
            var (hi, lo) = CpuFusedLoops.Split<T>(_mean[r]);
            for (long pos = start, local = start / _s; pos < end; local++)
            {
                long stop = Math.Min(end, (local + 1) * _s);
                var (sa, sb) = CpuFusedLoops.GradientSums(xr + pos, gr + pos, stop - pos, hi, lo);
                a[local] += sa;
                b[local] += sb;
                pos = stop;
            }
        }

        private void GroupInputGradient(long r, long start, long end)
        {
            long g = r % _g;
            double rs = _rstd[r], gammaA = 0, gammaB = 0;
            for (long j = 0; j < _d; j++)
            {
                double gamma = Gamma(g * _d + j);
                gammaA += gamma * _sumA[r * _d + j];
                gammaB += gamma * _sumB[r * _d + j];
            }
            var (bd, kd) = GroupNormMath.InputGradientCoefficients(rs, gammaA, gammaB, _plan.RowLength);
            var (hi, lo) = SplitMean<T>(_mean[r]);
            // dx = a·dy + b·(x − μhi) + (k − b·μlo).
            T b = CpuFusedLoops.FromDouble<T>(bd);
            T k = CpuFusedLoops.FromDouble<T>(kd - CpuFusedLoops.ToDouble(b) * lo);

            T* xr = _x + r * _plan.RowLength, gr = _dy + r * _plan.RowLength, dr = _dx + r * _plan.RowLength;
            for (long pos = start, local = start / _s; pos < end; local++)
            {
                long stop = Math.Min(end, (local + 1) * _s);
                T a = CpuFusedLoops.FromDouble<T>(rs * Gamma(g * _d + local));
                CpuFusedLoops.InputGradient(xr + pos, gr + pos, dr + pos, stop - pos, hi, a, b, k);
                pos = stop;
            }
        }

        // Channels-last: sample n; its channels' sums live at n·C .. n·C + C − 1.

        private void FusedSample(long n)
        {
            new Span<double>(_sumA + n * _c, (int)_c).Clear();
            new Span<double>(_sumB + n * _c, (int)_c).Clear();
            SampleSums(n, 0, _s, _sumA + n * _c, _sumB + n * _c);
            if (_dx != null) SampleInputGradient(n, 0, _s);
        }

        private void SampleBlockSums(long item)
        {
            var (start, end) = _plan.BlockRange(item % _plan.Blocks);
            SampleSums(item / _plan.Blocks, start, end, _partA + item * _c, _partB + item * _c);
        }

        private void SampleBlockInputGradient(long item)
        {
            var (start, end) = _plan.BlockRange(item % _plan.Blocks);
            SampleInputGradient(item / _plan.Blocks, start, end);
        }

        private void SampleSums(long n, long p0, long p1, double* a, double* b)
        {
            long c = _c;
            using var scratch = new Scratch(2 * c * sizeof(T));
            T* meanHi = (T*)scratch.Pointer, meanLo = meanHi + c;
            for (long g = 0; g < _g; g++) FillSplit(_mean[n * _g + g], meanHi + g * _d, meanLo + g * _d, _d);
            T* xs = _x + n * _s * c, gs = _dy + n * _s * c;
            long pieceRows = PieceRows<T>(c, 2);
            for (long q = p0; q < p1; q += pieceRows)
                CpuFusedLoops.AccumulateGradientColumns(xs + q * c, gs + q * c, Math.Min(pieceRows, p1 - q), c, meanHi, meanLo, a, b);
        }

        private void SampleInputGradient(long n, long p0, long p1)
        {
            long c = _c;
            using var scratch = new Scratch(4 * c * sizeof(T));
            T* hi = (T*)scratch.Pointer, a = hi + c, b = a + c, k = b + c;
            for (long g = 0; g < _g; g++)
            {
                long ng = n * _g + g;
                double rs = _rstd[ng], gammaA = 0, gammaB = 0;
                for (long j = g * _d; j < (g + 1) * _d; j++)
                {
                    gammaA += Gamma(j) * _sumA[n * c + j];
                    gammaB += Gamma(j) * _sumB[n * c + j];
                }
                var (bd, kd) = GroupNormMath.InputGradientCoefficients(rs, gammaA, gammaB, _d * _s);
                var (h, l) = SplitMean<T>(_mean[ng]);
                T bt = CpuFusedLoops.FromDouble<T>(bd);
                T kt = CpuFusedLoops.FromDouble<T>(kd - CpuFusedLoops.ToDouble(bt) * l);
                for (long j = g * _d; j < (g + 1) * _d; j++)
                {
                    hi[j] = h;
                    a[j] = CpuFusedLoops.FromDouble<T>(rs * Gamma(j));
                    b[j] = bt;
                    k[j] = kt;
                }
            }
            T* xs = _x + n * _s * c, gs = _dy + n * _s * c, ds = _dx + n * _s * c;
            long pieceRows = PieceRows<T>(c, 3);
            for (long q = p0; q < p1; q += pieceRows)
                CpuFusedLoops.InputGradientColumns(xs + q * c, gs + q * c, ds + q * c, Math.Min(pieceRows, p1 - q), c, hi, a, b, k);
        }
    }
}
