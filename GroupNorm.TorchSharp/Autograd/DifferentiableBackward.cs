using GroupNormalization.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Autograd;

/// <summary>
/// The backward pass as differentiable tensor expressions of (dy, x, γ, β), used when autograd is
/// recording the backward itself (create_graph: gradient penalties, Hessian-vector products).
/// <para>
/// μ and r saved by forward were computed without autograd and would be constants here, which is wrong
/// for a second derivative: they depend on x. So this path rebuilds them from x with recorded ops, then
/// runs the same formulas as the device-generic kernel's backward (<see cref="TensorFormulas.Backward"/>).
/// </para>
/// </summary>
internal static class DifferentiableBackward
{
    // The saved μ is used only as a constant shift: centring x on it first keeps the recorded mean and
    // variance exact in float32 when |μ| ≫ σ (x − μ_saved is exact near μ), and the shift cancels in every
    // derivative.
    public static (Tensor? Dx, Tensor? Dweight, Tensor? Dbias, Tensor? Dresidual) Compute(
        Tensor dy, Tensor x, Epilogue epilogue, Statistics saved, GroupNormShape s, double eps, GradientRequest need)
    {
        using var scope = torch.NewDisposeScope();
        var arithmetic = DTypeRules.Arithmetic(x.dtype);
        var shift = saved.MeanTensor(s, x.device).to(arithmetic).view(s.N, s.G, 1, 1);
        var xs = TensorFormulas.Grouped(x, s, arithmetic) - shift;
        var (mean, rstd) = TensorFormulas.Moments(xs, eps);
        var (dx, dweight, dbias, dresidual) = TensorFormulas.Backward(TensorFormulas.Grouped(dy, s, arithmetic), xs - mean, rstd, epilogue, s, need);
        dx = dx?.reshape(x.shape).to(x.dtype);
        dresidual = dresidual?.reshape(x.shape).to(x.dtype);
        return (dx?.MoveToOuterDisposeScope(), dweight?.MoveToOuterDisposeScope(), dbias?.MoveToOuterDisposeScope(), dresidual?.MoveToOuterDisposeScope());
    }
}
