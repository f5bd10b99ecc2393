using GroupNormalization.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Autograd;

/// <summary>
/// The backward pass written as differentiable tensor expressions of (dy, x, γ), used when autograd is
/// recording the backward itself (create_graph: gradient penalties, Hessian-vector products).
/// <para>
/// μ and r saved by forward were computed without autograd and would be constants here, which is wrong
/// for a second derivative: they depend on x. So this path rebuilds them from x with recorded ops.
/// The formula is the same as <see cref="GroupNormMath"/>'s, in its textbook form
/// dx = r·(g − mean(g) − x̂·mean(g·x̂)), g = γ·dy, x̂ = (x − μ)·r.
/// </para>
/// </summary>
internal static class DifferentiableBackward
{
    // savedMean (forward's μ) is used only as a constant shift: centring x on it first keeps the recorded
    // mean and variance exact in float32 when |μ| ≫ σ (x − μ_saved is exact near μ), and the shift
    // cancels in every derivative.
    public static (Tensor? Dx, Tensor? Dweight, Tensor? Dbias) Compute(
        Tensor dy, Tensor x, Epilogue epilogue, Statistics saved, GroupNormShape s, double eps, GradientRequest need)
    {
        using var scope = torch.NewDisposeScope();
        var (weight, bias, activation, _) = epilogue;
        var opmath = DeviceGenericKernel.OpMathType(x.dtype);
        var parameterType = epilogue.ParameterType;
        var groupDims = new long[] { 2, 3 };

        // The fused path's array holds μ in its first Rows entries (then r).
        var savedMean = saved.Host is { } host
            ? torch.tensor(host, ScalarType.Float64, x.device).narrow(0, 0, s.Rows)
            : saved.Mean!.detach();
        var shift = savedMean.to(opmath).view(s.N, s.G, 1, 1);
        var xs = x.reshape(s.N, s.G, s.D, s.S).to(opmath) - shift;
        var dys = dy.reshape(s.N, s.G, s.D, s.S).to(opmath);
        var centred = xs - xs.mean(groupDims, keepdim: true);
        var r = (centred.square().mean(groupDims, keepdim: true) + eps).rsqrt();
        var xhat = centred * r;
        var gamma = weight?.to(opmath).view(1, s.G, s.D, 1);
        if (activation != Activation.None)
        {
            // The pre-activation, rebuilt with recorded ops: act′(z) depends on x, γ and β too.
            var z = gamma is null ? xhat : xhat * gamma;
            if (bias is not null) z = z + bias.to(opmath).view(1, s.G, s.D, 1);
            dys = DeviceGenericKernel.ActivationGradient(dys, z, activation);
        }

        Tensor? dx = null, dweight = null, dbias = null;
        if (need.Input)
        {
            var g = gamma is null ? dys : dys * gamma;
            var meanG = g.mean(groupDims, keepdim: true);
            var meanGx = (g * xhat).mean(groupDims, keepdim: true);
            dx = (r * (g - meanG - xhat * meanGx)).reshape(x.shape).to(x.dtype);
        }
        if (need.Weight)
            dweight = (dys * xhat).sum(new long[] { 0, 3 }).reshape(s.C).to(parameterType);
        if (need.Bias)
            dbias = dys.sum(new long[] { 0, 3 }).reshape(s.C).to(parameterType);

        return (dx?.MoveToOuterDisposeScope(), dweight?.MoveToOuterDisposeScope(), dbias?.MoveToOuterDisposeScope());
    }
}
