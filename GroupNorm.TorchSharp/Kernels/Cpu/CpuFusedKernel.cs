using System;
using System.Numerics;
using System.Runtime.InteropServices;
using GroupNormalization.Interop;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>
/// The boundary of the fused, multi-threaded CPU kernels: tensors become checked pointers here, then the
/// call is dispatched on element type (<see cref="IElement{TS, T}"/>), activation (<see cref="IActivation"/>)
/// and layout (<see cref="ChannelsFirstKernel"/>, <see cref="ChannelsLastKernel"/>). Formulas:
/// <see cref="GroupNormMath"/>; work split: <see cref="WorkPlan"/>.
/// <para>
/// Forward: one pass sums deviations from a shift (the mean of the first piece) into float64 (a second
/// pass only when the shift proves far from μ); then y = act((x − μhi)·(r·γ) + (β − μlo·r·γ)). Backward:
/// per-(n, c) centred sums A, B in float64, then dx = a·dz + b·(x − μ) + k, with dz rebuilt from x. Only y
/// or dx is allocated at input size. float16 and bfloat16 are read and written as stored and computed in
/// float32, with float32 (mixed precision) or same-type parameters.
/// </para>
/// </summary>
internal static unsafe class CpuFusedKernel
{
    /// <summary>Up to this many rows, inference keeps its statistics on the stack.</summary>
    private const int StackRows = 256;

    /// <summary>CPU tensors of the four floating types, when this TorchSharp exposes tensor data addresses (see <see cref="TorchSharpInternals"/>).</summary>
    public static bool Supports(Tensor x) =>
        x.device_type == DeviceType.CPU && x.dtype is ScalarType.Float32 or ScalarType.Float64 or ScalarType.Float16 or ScalarType.BFloat16
        && TorchSharpInternals.DataPointerAvailable;

    /// <summary>float64 for float64 input, float32 for the others (the half types compute in float32).</summary>
    private static ScalarType ArithmeticType(ScalarType stored) => stored == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;

    /// <summary>
    /// y for a validated input; the per-(n, g) statistics go to caller-owned memory, <paramref name="mean"/>
    /// and <paramref name="rstd"/> of <see cref="GroupNormShape.Rows"/> entries each (scratch memory for
    /// inference, the autograd context's array when backward will need them).
    /// </summary>
    public static Tensor Forward(Tensor x, Epilogue epilogue, GroupNormShape shape, double eps, double* mean, double* rstd)
    {
        var layout = TensorMemory.DenseLayout(x);
        using var denseCopy = layout is null ? x.contiguous() : null;
        var src = denseCopy ?? x;
        var arithmetic = ArithmeticType(x.dtype);
        var w = ParameterIn(epilogue.Weight, arithmetic);
        var b = ParameterIn(epilogue.Bias, arithmetic);
        try
        {
            var y = torch.empty_like(src);
            var call = new ForwardCall
            {
                X = TensorMemory.Pointer<byte>(src),
                Y = TensorMemory.Pointer<byte>(y),
                Weight = PointerOrNull(w),
                Bias = PointerOrNull(b),
                Mean = mean,
                Rstd = rstd,
                Shape = shape,
                Eps = eps,
                Plan = WorkPlan.For(shape, layout ?? ChannelLayout.ChannelsFirst),
            };
            Dispatch(ref call, x.dtype, epilogue.Activation);
            GC.KeepAlive(src);
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

    /// <summary>Forward without a graph: the statistics live on the stack, or in scratch memory for many rows.</summary>
    public static Tensor Infer(Tensor x, Epilogue epilogue, GroupNormShape shape, double eps)
    {
        long rows = shape.Rows;
        if (rows <= StackRows)
        {
            double* stack = stackalloc double[(int)(2 * rows)];
            return Forward(x, epilogue, shape, eps, stack, stack + rows);
        }
        using var scratch = new Scratch(2 * rows * sizeof(double));
        double* mean = (double*)scratch.Pointer;
        return Forward(x, epilogue, shape, eps, mean, mean + rows);
    }

    /// <summary>The gradients <paramref name="need"/> asks for, from forward's statistics.</summary>
    public static (Tensor? Dx, Tensor? Dweight, Tensor? Dbias) Backward(
        Tensor dy, Tensor x, double* mean, double* rstd, Epilogue epilogue, GroupNormShape shape, GradientRequest need)
    {
        var xLayout = TensorMemory.DenseLayout(x);
        var layout = xLayout ?? ChannelLayout.ChannelsFirst;
        using var xCopy = xLayout is null ? TensorMemory.DenseCopy(x, layout) : null;
        using var dyCopy = TensorMemory.CopyUnlessIn(dy, layout);
        var xd = xCopy ?? x;
        var dyd = dyCopy ?? dy;
        var arithmetic = ArithmeticType(x.dtype);
        var parameterType = epilogue.ParameterType;
        var w = ParameterIn(epilogue.Weight, arithmetic);
        // β only shapes the gradient through the activation's pre-activation.
        var b = epilogue.Activation == Activation.None ? null : ParameterIn(epilogue.Bias, arithmetic);

        var dx = need.Input ? torch.empty_like(xd) : null;
        var dweight = need.Weight ? torch.empty(shape.C, arithmetic, torch.CPU) : null;
        var dbias = need.Bias ? torch.empty(shape.C, arithmetic, torch.CPU) : null;

        long nc = shape.N * shape.C;
        using (var sums = new Scratch(2 * nc * sizeof(double)))
        {
            var call = new BackwardCall
            {
                X = TensorMemory.Pointer<byte>(xd),
                Dy = TensorMemory.Pointer<byte>(dyd),
                Dx = PointerOrNull(dx),
                Weight = PointerOrNull(w),
                Bias = PointerOrNull(b),
                Mean = mean,
                Rstd = rstd,
                SumA = (double*)sums.Pointer,
                SumB = (double*)sums.Pointer + nc,
                Dweight = PointerOrNull(dweight),
                Dbias = PointerOrNull(dbias),
                Shape = shape,
                Plan = WorkPlan.For(shape, layout),
            };
            Dispatch(ref call, x.dtype, epilogue.Activation);
        }

        GC.KeepAlive(xd);
        GC.KeepAlive(dyd);
        GC.KeepAlive(w);
        GC.KeepAlive(b);
        if (!ReferenceEquals(w, epilogue.Weight)) w?.Dispose();
        if (!ReferenceEquals(b, epilogue.Bias)) b?.Dispose();
        // Same-type half parameters: their gradients were summed in float32 and are rounded once here.
        return (dx, ToType(dweight, parameterType), ToType(dbias, parameterType));
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

    // ---- dispatch: element type, then activation, then layout ---------------------------------------

    /// <summary>A kernel call generic in element type and activation, run once they are known.</summary>
    private interface IKernelCall
    {
        void Run<TE, TS, T, TA>()
            where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
            where TA : struct, IActivation;
    }

    private static void Dispatch<TCall>(ref TCall call, ScalarType dtype, Activation activation) where TCall : struct, IKernelCall
    {
        switch (dtype)
        {
            case ScalarType.Float32:
                WithActivation<TCall, NativeElement<float>, float, float>(ref call, activation);
                break;
            case ScalarType.Float64:
                WithActivation<TCall, NativeElement<double>, double, double>(ref call, activation);
                break;
            case ScalarType.Float16:
                WithActivation<TCall, Float16Element, Half, float>(ref call, activation);
                break;
            case ScalarType.BFloat16:
                WithActivation<TCall, BFloat16Element, ushort, float>(ref call, activation);
                break;
            default:
                throw new NotSupportedException($"The fused CPU kernel does not take {dtype}; the kernel selector should not have chosen it.");
        }
    }

    private static void WithActivation<TCall, TE, TS, T>(ref TCall call, Activation activation)
        where TCall : struct, IKernelCall
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
    {
        switch (activation)
        {
            case Activation.SiLU:
                call.Run<TE, TS, T, SiLU>();
                break;
            case Activation.ReLU:
                call.Run<TE, TS, T, ReLU>();
                break;
            default:
                call.Run<TE, TS, T, Identity>();
                break;
        }
    }

    private struct ForwardCall : IKernelCall
    {
        public void* X, Y, Weight, Bias;
        public double* Mean, Rstd;
        public GroupNormShape Shape;
        public double Eps;
        public WorkPlan Plan;

        public readonly void Run<TE, TS, T, TA>()
            where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
            where TA : struct, IActivation
        {
            if (Shape.GroupSize == 0)
            {
                // An empty spatial dimension with N > 0: groups of no elements, whose statistics are 0/0 as
                // in libtorch (its dweight for them comes back NaN, and so does ours from these). The
                // kernels' per-plane loops would divide by S = 0.
                for (long r = 0; r < Shape.Rows; r++) Mean[r] = Rstd[r] = double.NaN;
                return;
            }
            var operands = new ForwardOperands<TS, T>((TS*)X, (TS*)Y, (T*)Weight, (T*)Bias, Mean, Rstd);
            if (Plan.Layout == ChannelLayout.ChannelsFirst)
                ChannelsFirstKernel.Forward<TE, TS, T, TA>(operands, Shape, Eps, Plan);
            else
                ChannelsLastKernel.Forward<TE, TS, T, TA>(operands, Shape, Eps, Plan);
        }
    }

    private struct BackwardCall : IKernelCall
    {
        public void* X, Dy, Dx, Weight, Bias, Dweight, Dbias;
        public double* Mean, Rstd, SumA, SumB;
        public GroupNormShape Shape;
        public WorkPlan Plan;

        public readonly void Run<TE, TS, T, TA>()
            where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
            where TA : struct, IActivation
        {
            var operands = new BackwardOperands<TS, T>((TS*)X, (TS*)Dy, (TS*)Dx, (T*)Weight, (T*)Bias, Mean, Rstd, SumA, SumB);
            if (Shape.GroupSize == 0)
            {
                // Sums over no elements (see ForwardCall); dx is empty.
                NativeMemory.Clear(SumA, (nuint)(Shape.N * Shape.C * sizeof(double)));
                NativeMemory.Clear(SumB, (nuint)(Shape.N * Shape.C * sizeof(double)));
            }
            else if (Plan.Layout == ChannelLayout.ChannelsFirst)
                ChannelsFirstKernel.Backward<TE, TS, T, TA>(operands, Shape, Plan);
            else
                ChannelsLastKernel.Backward<TE, TS, T, TA>(operands, Shape, Plan);
            if (Dweight != null || Dbias != null)
                GroupNormMath.ParameterGradients(Shape, Rstd, SumA, SumB, (T*)Dweight, (T*)Dbias);
        }
    }
}
