using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Kernels;

// What the autograd function and the kernels agree on, in one place: the call's geometry, the kernel
// families and their common entry points, what follows the normalization, which gradients to compute,
// where forward leaves μ and r for backward, and which dtypes compute in which.

/// <summary>
/// The geometry of one group_norm call: N samples, C channels in G groups, S spatial positions
/// (the product of every dimension after the channel one; 1 for (N, C) input).
/// </summary>
internal readonly record struct GroupNormShape(long N, long C, long G, long S)
{
    /// <summary>Channels per group, C / G.</summary>
    public long D => C / G;

    /// <summary>Elements that share one mean and variance: D · S.</summary>
    public long GroupSize => C / G * S;

    /// <summary>Number of (n, g) statistics rows.</summary>
    public long Rows => N * G;

    public long Numel => N * C * S;
}

/// <summary>The two kernel families.</summary>
internal enum KernelKind
{
    /// <summary>Hand-written multi-threaded loops over CPU float32, float64, float16 and bfloat16 memory.</summary>
    CpuFused,

    /// <summary>TorchSharp tensor operations: any device (CUDA), any floating dtype; also the reference the fused path is tested against.</summary>
    DeviceGeneric,
}

/// <summary>
/// A kernel family, as the autograd function calls it. <see cref="KernelSelector"/> picks one per call,
/// and forward's choice travels to backward in the autograd context.
/// </summary>
internal interface IGroupNormKernel
{
    KernelKind Kind { get; }

    /// <summary>
    /// y; with <paramref name="keepStatistics"/>, also the statistics backward will read (otherwise they
    /// are scratch, and <paramref name="saved"/> is empty). One entry for both, so that a training forward
    /// reaches the loops with no wrapper frame.
    /// </summary>
    Tensor Forward(Tensor x, Epilogue epilogue, GroupNormShape shape, double eps, bool keepStatistics, out Statistics saved);

    /// <summary>
    /// The gradients <paramref name="need"/> asks for (the others are null), from forward's statistics. The
    /// residual's gradient is dz = dy·act′(z + r), asked for only with an activation (without one it is dy,
    /// which the autograd function passes on itself).
    /// </summary>
    (Tensor? Dx, Tensor? Dweight, Tensor? Dbias, Tensor? Dresidual) Backward(
        Tensor dy, Tensor x, Statistics saved, Epilogue epilogue, GroupNormShape shape, GradientRequest need);
}

/// <summary>
/// What follows the normalization x̂ = (x − μ)·r in the same kernel: the per-channel affine γ, β (absent
/// means γ = 1, β = 0), a residual tensor of x's shape and dtype added after it (absent: none), and the
/// activation, out = act(x̂·γ + β + residual). Backward needs β and the residual only to rebuild the
/// activation's input, so callers without an activation may leave them out; <see cref="ParameterType"/>
/// is therefore recorded by forward rather than read from β in backward.
/// </summary>
/// <param name="Weight">γ, or null for 1.</param>
/// <param name="Bias">β, or null for 0 (or when backward has no activation and does not need it).</param>
/// <param name="Residual">Added to x̂·γ + β before the activation (a ResNet block's shortcut), or null.</param>
/// <param name="Activation">The activation applied to x̂·γ + β + residual.</param>
/// <param name="ParameterType">The dtype the gradients of γ and β come back in (<see cref="DTypeRules.Parameter"/>).</param>
internal readonly record struct Epilogue(Tensor? Weight, Tensor? Bias, Tensor? Residual, Activation Activation, ScalarType ParameterType)
{
    /// <summary>The epilogue of a forward call, with its parameters' dtype.</summary>
    public static Epilogue Of(Tensor input, Tensor? weight, Tensor? bias, Tensor? residual, Activation activation) =>
        new(weight, bias, residual, activation, DTypeRules.Parameter(input, weight, bias));
}

/// <summary>Which gradients a backward call must produce; the others are never computed.</summary>
internal readonly record struct GradientRequest(bool Input, bool Weight, bool Bias, bool Residual = false)
{
    public bool Any => Input || Weight || Bias || Residual;
}

/// <summary>
/// The per-(n, g) μ and r = 1/√(σ² + ε) that forward leaves for backward. The fused kernels keep them in
/// one managed float64 array, <see cref="Host"/>: no tensor handles to create, save, unpack and release,
/// which is most of what a small call costs. The device-generic kernel keeps them as tensors on the
/// input's device. The host layout (μ of every row, then r of every row) is known only here.
/// </summary>
internal readonly record struct Statistics(double[]? Host, Tensor? Mean, Tensor? Rstd)
{
    /// <summary>Doubles the host layout takes for <paramref name="rows"/> statistics rows.</summary>
    public static long HostLength(long rows) => 2 * rows;

    /// <summary>A host array for forward to fill.</summary>
    public static Statistics OnHost(GroupNormShape shape) => new(new double[HostLength(shape.Rows)], null, null);

    /// <summary>Where the means start in host memory laid out as <see cref="Host"/>.</summary>
    public static unsafe double* MeanIn(double* host) => host;

    /// <summary>Where the r values start in host memory laid out as <see cref="Host"/>.</summary>
    public static unsafe double* RstdIn(double* host, long rows) => host + rows;

    /// <summary>μ as an (N·G) float64 tensor on <paramref name="device"/>, cut off the graph: as a constant shift for recorded formulas.</summary>
    public Tensor MeanTensor(GroupNormShape shape, Device device) =>
        Host is { } host
            ? torch.tensor(host, ScalarType.Float64, device).narrow(0, 0, shape.Rows)
            : Mean!.detach();
}

/// <summary>Which dtypes a call accepts, computes in and returns parameter gradients in.</summary>
internal static class DTypeRules
{
    /// <summary>The four floating types every path takes.</summary>
    public static bool IsSupported(ScalarType dtype) =>
        dtype is ScalarType.Float32 or ScalarType.Float64 or ScalarType.Float16 or ScalarType.BFloat16;

    /// <summary>A half-precision input with float32 parameters, which PyTorch accepts on CPU and CUDA.</summary>
    public static bool IsMixedPrecision(ScalarType input, ScalarType parameter) =>
        input is ScalarType.Float16 or ScalarType.BFloat16 && parameter == ScalarType.Float32;

    /// <summary>
    /// The type statistics and coefficients are computed in ("opmath"): float32 for the half types, the
    /// input's own otherwise. Half inputs are read as stored and rounded once on output.
    /// </summary>
    public static ScalarType Arithmetic(ScalarType stored) =>
        stored is ScalarType.Float16 or ScalarType.BFloat16 ? ScalarType.Float32 : stored;

    /// <summary>
    /// The dtype of γ's and β's gradients: the parameters' own (float32 for a mixed-precision half input),
    /// the input's when there are none.
    /// </summary>
    public static ScalarType Parameter(Tensor input, Tensor? weight, Tensor? bias) =>
        weight?.dtype ?? bias?.dtype ?? input.dtype;
}

/// <summary>Picks the kernel family for a call, once: forward carries the choice to backward.</summary>
internal static class KernelSelector
{
    public static IGroupNormKernel Select(Tensor x)
    {
        var kind = KernelOverride.Current?.Kernel
            ?? (Cpu.CpuFusedKernel.Supports(x) ? KernelKind.CpuFused : KernelKind.DeviceGeneric);
        return kind == KernelKind.CpuFused ? Cpu.CpuFusedKernel.Instance : DeviceGenericKernel.Instance;
    }
}

