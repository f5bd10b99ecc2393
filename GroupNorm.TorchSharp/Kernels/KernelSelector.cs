using System;
using GroupNormalization.Kernels.Cpu;
using static TorchSharp.torch;

namespace GroupNormalization.Kernels;

/// <summary>The two kernel families.</summary>
internal enum KernelKind
{
    /// <summary>Hand-written multi-threaded loops over CPU float32, float64, float16 and bfloat16 memory.</summary>
    CpuFused,

    /// <summary>TorchSharp tensor operations: any device (CUDA), any floating dtype; also the reference the fused path is tested against.</summary>
    DeviceGeneric,
}

/// <summary>
/// The per-(n, g) μ and r = 1/√(σ² + ε) that forward leaves for backward. The fused kernels keep them in
/// a managed float64 array (μ in the first <see cref="GroupNormShape.Rows"/> entries, r in the next): no
/// tensor handles to create, save, unpack and release, which is most of what a small call costs. The
/// device-generic kernel keeps them as tensors on the input's device.
/// </summary>
internal readonly record struct Statistics(double[]? Host, Tensor? Mean, Tensor? Rstd);

/// <summary>
/// Picks the kernel for an input. Tests and benchmarks can pin the device-generic path on the current
/// thread to compare both families on the same inputs.
/// </summary>
internal static unsafe class KernelSelector
{
    [ThreadStatic]
    private static KernelKind? t_forced;

    public static KernelKind Select(Tensor x) =>
        t_forced ?? (CpuFusedKernel.Supports(x) ? KernelKind.CpuFused : KernelKind.DeviceGeneric);

    /// <summary>Forces <paramref name="kind"/> on this thread until the returned scope is disposed.</summary>
    public static IDisposable Force(KernelKind kind) => new ForcedScope(kind);

    /// <summary>Forward for backward's sake: y, and the statistics backward will read.</summary>
    public static (Tensor Y, Statistics Statistics) Forward(KernelKind kind, Tensor x, Epilogue epilogue, GroupNormShape shape, double eps)
    {
        if (kind == KernelKind.DeviceGeneric)
        {
            var (y, mean, rstd) = DeviceGenericKernel.Forward(x, epilogue, shape, eps);
            return (y, new Statistics(null, mean, rstd));
        }
        var host = new double[2 * shape.Rows];
        fixed (double* s = host)
            return (CpuFusedKernel.Forward(x, epilogue, shape, eps, s, s + shape.Rows), new Statistics(host, null, null));
    }

    /// <summary>Forward when no graph is recorded: only y; the fused path keeps its statistics in scratch memory.</summary>
    public static Tensor Infer(KernelKind kind, Tensor x, Epilogue epilogue, GroupNormShape shape, double eps)
    {
        if (kind == KernelKind.DeviceGeneric)
        {
            var (y, mean, rstd) = DeviceGenericKernel.Forward(x, epilogue, shape, eps);
            mean.Dispose();
            rstd.Dispose();
            return y;
        }
        return CpuFusedKernel.Infer(x, epilogue, shape, eps);
    }

    public static (Tensor? Dx, Tensor? Dweight, Tensor? Dbias) Backward(
        KernelKind kind, Tensor dy, Tensor x, Statistics statistics, Epilogue epilogue, GroupNormShape shape, GradientRequest need)
    {
        if (kind == KernelKind.DeviceGeneric)
            return DeviceGenericKernel.Backward(dy, x, statistics.Mean!, statistics.Rstd!, epilogue, shape, need);
        fixed (double* s = statistics.Host)
            return CpuFusedKernel.Backward(dy, x, s, s + shape.Rows, epilogue, shape, need);
    }

    private sealed class ForcedScope : IDisposable
    {
        private readonly KernelKind? _previous;

        public ForcedScope(KernelKind kind)
        {
            if (kind == KernelKind.CpuFused)
                throw new ArgumentException("Only the device-generic path can be forced; the fused path is chosen whenever it applies.", nameof(kind));
            _previous = t_forced;
            t_forced = kind;
        }

        public void Dispose() => t_forced = _previous;
    }
}
