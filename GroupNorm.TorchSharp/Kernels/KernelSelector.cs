using System;
using static TorchSharp.torch;

namespace GroupNormalization.Kernels;

/// <summary>The two kernel families.</summary>
internal enum KernelKind
{
    /// <summary>Hand-written multi-threaded loops over CPU float32/float64 memory.</summary>
    CpuFused,

    /// <summary>TorchSharp tensor operations: any device, any floating dtype.</summary>
    DeviceGeneric,
}

/// <summary>
/// Picks the kernel for an input. Tests and benchmarks can pin the device-generic path on the current
/// thread to compare both families on the same inputs.
/// </summary>
internal static class KernelSelector
{
    [ThreadStatic]
    private static KernelKind? t_forced;

    public static KernelKind Select(Tensor x) =>
        t_forced ?? (CpuFusedKernel.Supports(x) ? KernelKind.CpuFused : KernelKind.DeviceGeneric);

    /// <summary>Forces <paramref name="kind"/> on this thread until the returned scope is disposed.</summary>
    public static IDisposable Force(KernelKind kind) => new ForcedScope(kind);

    public static (Tensor Y, Tensor Mean, Tensor Rstd) Forward(KernelKind kind, Tensor x, Tensor? weight, Tensor? bias, GroupNormShape shape, double eps) =>
        kind == KernelKind.CpuFused
            ? CpuFusedKernel.Forward(x, weight, bias, shape, eps)
            : DeviceGenericKernel.Forward(x, weight, bias, shape, eps);

    /// <summary>Forward when no graph is recorded: only y is returned (the fused path keeps no statistics tensors).</summary>
    public static Tensor Infer(KernelKind kind, Tensor x, Tensor? weight, Tensor? bias, GroupNormShape shape, double eps)
    {
        if (kind == KernelKind.CpuFused) return CpuFusedKernel.Infer(x, weight, bias, shape, eps);
        var (y, mean, rstd) = DeviceGenericKernel.Forward(x, weight, bias, shape, eps);
        mean.Dispose();
        rstd.Dispose();
        return y;
    }

    public static (Tensor? Dx, Tensor? Dweight, Tensor? Dbias) Backward(
        KernelKind kind, Tensor dy, Tensor x, Tensor mean, Tensor rstd, Tensor? weight, GroupNormShape shape, GradientRequest need) =>
        kind == KernelKind.CpuFused
            ? CpuFusedKernel.Backward(dy, x, mean, rstd, weight, shape, need)
            : DeviceGenericKernel.Backward(dy, x, mean, rstd, weight, shape, need);

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
