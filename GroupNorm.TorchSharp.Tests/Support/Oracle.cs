using System;
using System.Collections.Generic;
using System.Linq;
using GroupNormalization.Autograd;
using GroupNormalization.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Support;


/// <summary>Which of our kernel families a test drives.</summary>
public enum KernelPath
{
    /// <summary>Whatever the selector picks: the fused kernel for CPU float32/float64.</summary>
    Default,

    /// <summary>The device-generic kernel, pinned with <see cref="KernelOverride.Force"/>.</summary>
    Generic,
}

/// <summary>Which of our entry points a test drives.</summary>
public enum Api
{
    /// <summary><see cref="Functional.group_norm"/> with the caller's tensors.</summary>
    Functional,

    /// <summary>A <see cref="GroupNorm"/> module whose parameters hold the caller's values (both or neither).</summary>
    Module,
}

/// <summary>Forcing a <see cref="KernelPath"/>.</summary>
internal static class KernelPaths
{
    /// <summary>An override that pins <paramref name="path"/> on this thread (and records what runs), until disposed.</summary>
    public static KernelOverride Force(this KernelPath path) =>
        KernelOverride.Force(kernel: path == KernelPath.Generic ? KernelKind.DeviceGeneric : null);
}

/// <summary>Forward output and the gradients of (y · dy).sum() that were asked for.</summary>
internal sealed record GroupNormResult(Tensor Y, Tensor? Dx, Tensor? Dweight, Tensor? Dbias)
{
    /// <summary>The residual's gradient, when the call had a residual that required one.</summary>
    public Tensor? Dresidual { get; init; }

    /// <summary>The route our forward took (<see cref="KernelOverride.LastForward"/>); None for the oracle.</summary>
    public ForwardRoute Forward { get; init; }
}

/// <summary>
/// Runs a group_norm call through libtorch's native kernel (the oracle) or through ours, with the same
/// inputs, so that a test compares like with like.
/// </summary>
internal static class Oracle
{
    /// <summary>
    /// libtorch's <c>torch.nn.functional.group_norm</c>, then <c>+ residual</c> when there is one, then
    /// libtorch's own silu, relu or gelu when <paramref name="activation"/> asks for one. Inputs are detached into
    /// fresh leaves (the residual requires grad only if the caller's does); the caller owns everything
    /// returned (it lives in the caller's dispose scope).
    /// </summary>
    public static GroupNormResult Native(Tensor x, long groups, Tensor? weight, Tensor? bias, double eps, Tensor? dy,
        Activation activation = Activation.None, Tensor? residual = null)
    {
        var xl = x.detach().requires_grad_(dy is not null);
        var wl = weight?.detach().requires_grad_(dy is not null);
        var bl = bias?.detach().requires_grad_(dy is not null);
        var rl = residual?.detach().requires_grad_(dy is not null && residual.requires_grad);
        // libtorch's backward aborts the process when bias is given without weight; an all-ones weight
        // that does not require grad is the same function and takes the path that works. It takes the
        // bias's dtype, which differs from x's in a mixed-precision call.
        var wArg = wl ?? (bl is null ? null : torch.ones(x.shape[1], bl.dtype, x.device));
        var normalized = torch.nn.functional.group_norm(xl, groups, wArg, bl, eps);
        var y = Activate(rl is null ? normalized : normalized + rl, activation);
        return dy is null ? new GroupNormResult(y, null, null, null) : Differentiate(y, dy, xl, wl, bl, rl);
    }

    /// <summary>Every activation the kernels fuse, without <see cref="Activation.None"/>: new ones join every suite that uses this.</summary>
    public static Activation[] FusedActivations { get; } = Enum.GetValues<Activation>().Where(a => a != Activation.None).ToArray();

    /// <summary><see cref="Activation.None"/>, then every fused activation.</summary>
    public static Activation[] AllActivations { get; } = Enum.GetValues<Activation>();

    /// <summary>libtorch's own activation, applied as a separate op (the composite our fused one must equal).</summary>
    public static Tensor Activate(Tensor z, Activation activation) => activation switch
    {
        Activation.None => z,
        Activation.SiLU => torch.nn.functional.silu(z),
        Activation.ReLU => torch.nn.functional.relu(z),
        Activation.GELU => torch.nn.functional.gelu(z),
        _ => throw new ArgumentOutOfRangeException(nameof(activation), activation, null),
    };

    /// <summary>
    /// Ours on <paramref name="path"/> through <paramref name="api"/>, forward and backward. The module
    /// form gets parameters of weight's dtype holding weight's and bias's values, so it needs both or neither.
    /// </summary>
    public static GroupNormResult Ours(KernelPath path, Tensor x, long groups, Tensor? weight, Tensor? bias, double eps, Tensor? dy,
        Activation activation = Activation.None, Api api = Api.Functional, Tensor? residual = null)
    {
        using var forced = path.Force();
        var result = Run(x, groups, weight, bias, eps, dy, activation, api, residual);
        return result with { Forward = forced.LastForward };
    }

    private static GroupNormResult Run(Tensor x, long groups, Tensor? weight, Tensor? bias, double eps, Tensor? dy, Activation activation, Api api,
        Tensor? residual)
    {
        var xl = x.detach().requires_grad_(dy is not null);
        var rl = residual?.detach().requires_grad_(dy is not null && residual.requires_grad);
        if (api == Api.Module)
        {
            if ((weight is null) != (bias is null))
                throw new ArgumentException("A module has both affine parameters or neither.", nameof(weight));
            using var module = new GroupNorm(groups, x.shape[1], eps, affine: weight is not null, device: x.device,
                dtype: weight?.dtype ?? x.dtype, activation: activation);
            if (weight is not null)
            {
                using (torch.no_grad())
                {
                    module.weight!.copy_(weight);
                    module.bias!.copy_(bias!);
                }
                module.weight!.requires_grad_(dy is not null);
                module.bias!.requires_grad_(dy is not null);
            }
            var ym = rl is null ? module.forward(xl) : module.forward(xl, rl);
            return dy is null ? new GroupNormResult(ym, null, null, null) : Differentiate(ym, dy, xl, module.weight, module.bias, rl);
        }
        var wl = weight?.detach().requires_grad_(dy is not null);
        var bl = bias?.detach().requires_grad_(dy is not null);
        var y = Functional.group_norm(xl, groups, wl, bl, eps, activation, rl);
        return dy is null ? new GroupNormResult(y, null, null, null) : Differentiate(y, dy, xl, wl, bl, rl);
    }

    private static GroupNormResult Differentiate(Tensor y, Tensor dy, Tensor x, Tensor? weight, Tensor? bias, Tensor? residual = null)
    {
        var inputs = new List<Tensor> { x };
        if (weight is not null) inputs.Add(weight);
        if (bias is not null) inputs.Add(bias);
        if (residual is { requires_grad: true }) inputs.Add(residual);
        var grads = torch.autograd.grad(new[] { y }, inputs, new[] { dy });
        int k = 1;
        var dweight = weight is null ? null : grads[k++];
        var dbias = bias is null ? null : grads[k++];
        var dresidual = residual is { requires_grad: true } ? grads[k] : null;
        return new GroupNormResult(y.detach(), grads[0], dweight, dbias) { Dresidual = dresidual };
    }
}
