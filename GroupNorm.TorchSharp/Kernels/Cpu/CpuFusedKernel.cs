using System;
using System.Numerics;
using System.Runtime.InteropServices;
using GroupNormalization.Interop;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>
/// The boundary of the fused, multi-threaded CPU kernels: tensors become checked pointers here, then one
/// entry is chosen on element type (<see cref="IElement{TS, T}"/>), activation (<see cref="IActivation"/>),
/// residual (<see cref="IResidual"/>) and layout (the jobs of <see cref="ChannelsFirstKernel"/> and <see cref="ChannelsLastKernel"/>) and
/// called: <see cref="SplitPhases"/> instantiated for that job. The choice returns a function pointer
/// instead of calling through a level per decision, so none of them is on the stack while the loops run.
/// Formulas: <see cref="GroupNormMath"/>; work split: <see cref="WorkPlan"/>.
/// <para>
/// Forward: one pass sums deviations from a shift (the mean of the first piece) into float64 (a second
/// pass only when the shift proves far from μ); then y = act((x − μhi)·(r·γ) + (β − μlo·r·γ) + residual).
/// Backward: per-(n, c) centred sums A, B in float64, then dx = a·dz + b·(x − μ) + k, with dz rebuilt from
/// x (and the residual); the residual's gradient dz is written by the sums pass. Only y, or dx and dr,
/// are allocated at input size. float16 and bfloat16 are read and written as stored and computed in
/// float32, with float32 (mixed precision) or same-type parameters.
/// </para>
/// </summary>
internal sealed unsafe class CpuFusedKernel : IGroupNormKernel
{
    /// <summary>Up to this many rows, inference keeps its statistics on the stack.</summary>
    private const int StackRows = 256;

    public static readonly CpuFusedKernel Instance = new();

    private CpuFusedKernel()
    {
    }

    public KernelKind Kind => KernelKind.CpuFused;

    /// <summary>CPU tensors of the four floating types, when this TorchSharp exposes tensor data addresses (see <see cref="TorchSharpInternals"/>).</summary>
    public static bool Supports(Tensor x) =>
        x.device_type == DeviceType.CPU && DTypeRules.IsSupported(x.dtype) && TorchSharpInternals.DataPointerAvailable;

    /// <summary>
    /// y for a validated input. The statistics go to the array backward keeps, or for inference to the
    /// stack, or to scratch memory for many rows.
    /// </summary>
    public Tensor Forward(Tensor x, Epilogue epilogue, GroupNormShape shape, double eps, bool keepStatistics, out Statistics saved)
    {
        long length = Statistics.HostLength(shape.Rows);
        saved = keepStatistics ? Statistics.OnHost(shape) : default;
        Span<double> stack = !keepStatistics && shape.Rows <= StackRows ? stackalloc double[(int)length] : default;
        using var scratch = !keepStatistics && shape.Rows > StackRows ? new Scratch(length * sizeof(double)) : default;
        // A non-dense input is copied once, row-major.
        var xLayout = TensorMemory.DenseLayout(x);
        var layout = xLayout ?? ChannelLayout.ChannelsFirst;
        using var denseCopy = xLayout is null ? x.contiguous() : null;
        var src = denseCopy ?? x;
        using var residualCopy = epilogue.Residual is { } residual ? TensorMemory.CopyUnlessIn(residual, layout) : null;
        var res = residualCopy ?? epilogue.Residual;
        var arithmetic = DTypeRules.Arithmetic(x.dtype);
        var w = ParameterIn(epilogue.Weight, arithmetic);
        var b = ParameterIn(epilogue.Bias, arithmetic);
        try
        {
            var y = RecycledMemory.Empty(src, layout);
            fixed (double* kept = saved.Host, onStack = stack)
            {
                double* statistics = kept != null ? kept : onStack != null ? onStack : (double*)scratch.Pointer;
                var call = new ForwardCall
                {
                    X = TensorMemory.Pointer<byte>(src),
                    Y = TensorMemory.Pointer<byte>(y),
                    Residual = PointerOrNull(res),
                    Weight = PointerOrNull(w),
                    Bias = PointerOrNull(b),
                    Mean = Statistics.MeanIn(statistics),
                    Rstd = Statistics.RstdIn(statistics, shape.Rows),
                    Shape = shape,
                    Eps = eps,
                    Plan = WorkPlan.For(shape, layout),
                };
                if (shape.GroupSize == 0)
                {
                    // An empty spatial dimension with N > 0: groups of no elements, whose statistics are 0/0 as
                    // in libtorch (its dweight for them comes back NaN, and so does ours from these). The
                    // kernels' per-plane loops would divide by S = 0.
                    for (long r = 0; r < shape.Rows; r++) call.Mean[r] = call.Rstd[r] = double.NaN;
                }
                else
                {
                    ((delegate*<ForwardCall*, void>)Entry<ForwardPass>(x.dtype, epilogue.Activation, res is not null, call.Plan.Layout))(&call);
                }
            }
            GC.KeepAlive(src);
            GC.KeepAlive(res);
            GC.KeepAlive(w);
            GC.KeepAlive(b);
            return y;
        }
        finally
        {
            if (!ReferenceEquals(w, epilogue.Weight)) w?.Dispose();
            if (!ReferenceEquals(b, epilogue.Bias)) b?.Dispose();
        }
    }

    public (Tensor? Dx, Tensor? Dweight, Tensor? Dbias, Tensor? Dresidual) Backward(
        Tensor dy, Tensor x, Statistics saved, Epilogue epilogue, GroupNormShape shape, GradientRequest need)
    {
        var xLayout = TensorMemory.DenseLayout(x);
        var layout = xLayout ?? ChannelLayout.ChannelsFirst;
        using var xCopy = xLayout is null ? TensorMemory.DenseCopy(x, layout) : null;
        using var dyCopy = TensorMemory.CopyUnlessIn(dy, layout);
        var xd = xCopy ?? x;
        var dyd = dyCopy ?? dy;
        // β and the residual shape the gradient only through the activation's input.
        bool activated = epilogue.Activation != Activation.None;
        var residual = activated ? epilogue.Residual : null;
        using var residualCopy = residual is null ? null : TensorMemory.CopyUnlessIn(residual, layout);
        var rd = residualCopy ?? residual;
        var arithmetic = DTypeRules.Arithmetic(x.dtype);
        var w = ParameterIn(epilogue.Weight, arithmetic);
        var b = activated ? ParameterIn(epilogue.Bias, arithmetic) : null;

        var dx = need.Input ? RecycledMemory.Empty(xd, layout) : null;
        var dr = need.Residual ? RecycledMemory.Empty(xd, layout) : null;
        var dweight = need.Weight ? torch.empty(shape.C, arithmetic, torch.CPU) : null;
        var dbias = need.Bias ? torch.empty(shape.C, arithmetic, torch.CPU) : null;

        long nc = shape.N * shape.C;
        using var sums = new Scratch(2 * nc * sizeof(double));
        fixed (double* statistics = saved.Host)
        {
            var call = new BackwardCall
            {
                X = TensorMemory.Pointer<byte>(xd),
                Dy = TensorMemory.Pointer<byte>(dyd),
                Dx = PointerOrNull(dx),
                Residual = PointerOrNull(rd),
                Dr = PointerOrNull(dr),
                Weight = PointerOrNull(w),
                Bias = PointerOrNull(b),
                Mean = Statistics.MeanIn(statistics),
                Rstd = Statistics.RstdIn(statistics, shape.Rows),
                SumA = (double*)sums.Pointer,
                SumB = (double*)sums.Pointer + nc,
                Shape = shape,
                Plan = WorkPlan.For(shape, layout),
            };
            if (shape.GroupSize == 0)
            {
                // Sums over no elements (see forward); dx and dr are empty.
                NativeMemory.Clear(call.SumA, (nuint)(2 * nc * sizeof(double)));
            }
            else
            {
                ((delegate*<BackwardCall*, void>)Entry<BackwardPass>(x.dtype, epilogue.Activation, rd is not null, layout))(&call);
            }
            if (dweight is not null || dbias is not null)
            {
                if (arithmetic == ScalarType.Float64)
                    GroupNormMath.ParameterGradients(shape, call.Rstd, call.SumA, call.SumB, (double*)PointerOrNull(dweight), (double*)PointerOrNull(dbias));
                else
                    GroupNormMath.ParameterGradients(shape, call.Rstd, call.SumA, call.SumB, (float*)PointerOrNull(dweight), (float*)PointerOrNull(dbias));
            }
        }

        GC.KeepAlive(xd);
        GC.KeepAlive(dyd);
        GC.KeepAlive(rd);
        GC.KeepAlive(w);
        GC.KeepAlive(b);
        if (!ReferenceEquals(w, epilogue.Weight)) w?.Dispose();
        if (!ReferenceEquals(b, epilogue.Bias)) b?.Dispose();
        // Same-type half parameters: their gradients were summed in float32 and are rounded once here.
        return (dx, ToType(dweight, epilogue.ParameterType), ToType(dbias, epilogue.ParameterType), dr);
    }

    /// <summary>A parameter as a contiguous tensor of the arithmetic type: itself when it already is, else a copy the caller disposes.</summary>
    private static Tensor? ParameterIn(Tensor? p, ScalarType arithmetic)
    {
        if (p is null) return null;
        if (p.dtype != arithmetic) return p.to(arithmetic).contiguous();
        // Parameters are almost always contiguous already; asking is cheaper than a new handle per call.
        return TensorMemory.ContiguousOrSelf(p);
    }

    private static Tensor? ToType(Tensor? t, ScalarType dtype)
    {
        if (t is null || t.dtype == dtype) return t;
        using (t) return t.to(dtype);
    }

    private static void* PointerOrNull(Tensor? t) => t is null ? null : TensorMemory.Pointer<byte>(t);

    // ---- the entry: element type, then activation, then residual, then layout ---------------------------

    /// <summary>One direction's layout kernels, instantiated once the element type and activation are known.</summary>
    private interface IPass
    {
        /// <summary>The address of the layout kernel's entry for these types, as an untyped pointer.</summary>
        void* Entry<TE, TS, T, TA, TR>(ChannelLayout layout)
            where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
            where TA : struct, IActivation where TR : struct, IResidual;
    }

    private struct ForwardPass : IPass
    {
        public readonly void* Entry<TE, TS, T, TA, TR>(ChannelLayout layout)
            where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
            where TA : struct, IActivation where TR : struct, IResidual =>
            layout == ChannelLayout.ChannelsFirst
                ? (delegate*<ForwardCall*, void>)&SplitPhases.Forward<ChannelsFirstKernel.ForwardJob<TE, TS, T, TA, TR>>
                : (delegate*<ForwardCall*, void>)&SplitPhases.Forward<ChannelsLastKernel.ForwardJob<TE, TS, T, TA, TR>>;
    }

    private struct BackwardPass : IPass
    {
        public readonly void* Entry<TE, TS, T, TA, TR>(ChannelLayout layout)
            where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
            where TA : struct, IActivation where TR : struct, IResidual =>
            layout == ChannelLayout.ChannelsFirst
                ? (delegate*<BackwardCall*, void>)&SplitPhases.Backward<ChannelsFirstKernel.BackwardJob<TE, TS, T, TA, TR>>
                : (delegate*<BackwardCall*, void>)&SplitPhases.Backward<ChannelsLastKernel.BackwardJob<TE, TS, T, TA, TR>>;
    }

    private static void* Entry<TPass>(ScalarType dtype, Activation activation, bool residual, ChannelLayout layout) where TPass : struct, IPass =>
        dtype switch
        {
            ScalarType.Float32 => WithActivation<TPass, NativeElement<float>, float, float>(activation, residual, layout),
            ScalarType.Float64 => WithActivation<TPass, NativeElement<double>, double, double>(activation, residual, layout),
            ScalarType.Float16 => WithActivation<TPass, Float16Element, Half, float>(activation, residual, layout),
            ScalarType.BFloat16 => WithActivation<TPass, BFloat16Element, ushort, float>(activation, residual, layout),
            _ => throw new NotSupportedException($"The fused CPU kernel does not take {dtype}; the kernel selector should not have chosen it."),
        };

    private static void* WithActivation<TPass, TE, TS, T>(Activation activation, bool residual, ChannelLayout layout)
        where TPass : struct, IPass
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T> =>
        activation switch
        {
            Activation.SiLU => WithResidual<TPass, TE, TS, T, Smooth<SiLUFormula>>(residual, layout),
            Activation.ReLU => WithResidual<TPass, TE, TS, T, ReLU>(residual, layout),
            Activation.GELU => WithResidual<TPass, TE, TS, T, Smooth<GeluFormula>>(residual, layout),
            _ => WithResidual<TPass, TE, TS, T, Identity>(residual, layout),
        };

    private static void* WithResidual<TPass, TE, TS, T, TA>(bool residual, ChannelLayout layout)
        where TPass : struct, IPass
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
        where TA : struct, IActivation =>
        residual
            ? default(TPass).Entry<TE, TS, T, TA, AddResidual>(layout)
            : default(TPass).Entry<TE, TS, T, TA, NoResidual>(layout);
}
