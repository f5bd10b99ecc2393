using System;
using System.Collections.Generic;
using System.Linq;
using GroupNormalization.Autograd;
using GroupNormalization.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Parity;

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

/// <summary>Which affine parameters a call passes.</summary>
public enum Affine
{
    Both,
    None,
    WeightOnly,
    BiasOnly,
}

/// <summary>How the input sits in memory.</summary>
public enum Layout
{
    Contiguous,
    ChannelsLast,

    /// <summary>A permuted view that is dense in neither channels-first nor channels-last order.</summary>
    Transposed,

    /// <summary>Every other channel and a window of the last dimension of a larger tensor.</summary>
    Sliced,
}

/// <summary>Forward output and the gradients of (y · dy).sum() that were asked for.</summary>
internal sealed record GroupNormResult(Tensor Y, Tensor? Dx, Tensor? Dweight, Tensor? Dbias)
{
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
    /// libtorch's <c>torch.nn.functional.group_norm</c>, followed by libtorch's own silu or relu when
    /// <paramref name="activation"/> asks for one. Inputs are detached into fresh leaves; the caller owns
    /// everything returned (it lives in the caller's dispose scope).
    /// </summary>
    public static GroupNormResult Native(Tensor x, long groups, Tensor? weight, Tensor? bias, double eps, Tensor? dy,
        Activation activation = Activation.None)
    {
        var xl = x.detach().requires_grad_(dy is not null);
        var wl = weight?.detach().requires_grad_(dy is not null);
        var bl = bias?.detach().requires_grad_(dy is not null);
        // libtorch's backward aborts the process when bias is given without weight; an all-ones weight
        // that does not require grad is the same function and takes the path that works. It takes the
        // bias's dtype, which differs from x's in a mixed-precision call.
        var wArg = wl ?? (bl is null ? null : torch.ones(x.shape[1], bl.dtype, x.device));
        var y = Activate(torch.nn.functional.group_norm(xl, groups, wArg, bl, eps), activation);
        return dy is null ? new GroupNormResult(y, null, null, null) : Differentiate(y, dy, xl, wl, bl);
    }

    /// <summary>libtorch's own activation, applied as a separate op (the composite our fused one must equal).</summary>
    public static Tensor Activate(Tensor z, Activation activation) => activation switch
    {
        Activation.None => z,
        Activation.SiLU => torch.nn.functional.silu(z),
        Activation.ReLU => torch.nn.functional.relu(z),
        _ => throw new ArgumentOutOfRangeException(nameof(activation), activation, null),
    };

    /// <summary>
    /// Ours on <paramref name="path"/> through <paramref name="api"/>, forward and backward. The module
    /// form gets parameters of weight's dtype holding weight's and bias's values, so it needs both or neither.
    /// </summary>
    public static GroupNormResult Ours(KernelPath path, Tensor x, long groups, Tensor? weight, Tensor? bias, double eps, Tensor? dy,
        Activation activation = Activation.None, Api api = Api.Functional)
    {
        using var forced = KernelOverride.Force(kernel: path == KernelPath.Generic ? KernelKind.DeviceGeneric : null);
        var result = Run(x, groups, weight, bias, eps, dy, activation, api);
        return result with { Forward = forced.LastForward };
    }

    private static GroupNormResult Run(Tensor x, long groups, Tensor? weight, Tensor? bias, double eps, Tensor? dy, Activation activation, Api api)
    {
        var xl = x.detach().requires_grad_(dy is not null);
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
            var ym = module.forward(xl);
            return dy is null ? new GroupNormResult(ym, null, null, null) : Differentiate(ym, dy, xl, module.weight, module.bias);
        }
        var wl = weight?.detach().requires_grad_(dy is not null);
        var bl = bias?.detach().requires_grad_(dy is not null);
        var y = Functional.group_norm(xl, groups, wl, bl, eps, activation);
        return dy is null ? new GroupNormResult(y, null, null, null) : Differentiate(y, dy, xl, wl, bl);
    }

    private static GroupNormResult Differentiate(Tensor y, Tensor dy, Tensor x, Tensor? weight, Tensor? bias)
    {
        var inputs = new List<Tensor> { x };
        if (weight is not null) inputs.Add(weight);
        if (bias is not null) inputs.Add(bias);
        var grads = torch.autograd.grad(new[] { y }, inputs, new[] { dy });
        int k = 1;
        var dweight = weight is null ? null : grads[k++];
        var dbias = bias is null ? null : grads[k];
        return new GroupNormResult(y.detach(), grads[0], dweight, dbias);
    }
}

/// <summary>Error measures and input builders shared by the parity, accuracy and CUDA tests.</summary>
internal static class TestTensors
{
    /// <summary>
    /// max|actual − expected| / max|expected|, in float64: relative to the tensor's scale, so that entries
    /// that happen to be near zero do not dominate. <see cref="ScaledError"/> with no floor.
    /// </summary>
    public static double RelativeError(Tensor actual, Tensor expected) => ScaledError(actual, expected, 0);

    /// <summary>
    /// max|actual − expected| / max(max|expected|, <paramref name="scale"/>), in float64: the error against
    /// the larger of the result's size and a scale the caller knows the rounding lives at. Empty tensors
    /// have no error. Any NaN, and any infinity not matched by the same infinity at the same place, gives
    /// +∞: NUnit orders NaN below every number, so a NaN error would pass any "less than" bound.
    /// </summary>
    public static double ScaledError(Tensor actual, Tensor expected, double scale)
    {
        if (!actual.shape.SequenceEqual(expected.shape))
            throw new ArgumentException($"Shapes differ: [{string.Join(", ", actual.shape)}] vs [{string.Join(", ", expected.shape)}].", nameof(actual));
        if (expected.numel() == 0) return 0;
        using var scope = torch.NewDisposeScope();
        var a = actual.detach().cpu().to(ScalarType.Float64);
        var e = expected.detach().cpu().to(ScalarType.Float64);
        if (a.isnan().any().item<bool>() || e.isnan().any().item<bool>()) return double.PositiveInfinity;
        // Equal infinities are no error; everywhere else the finite difference is measured.
        var same = a.eq(e);
        if (!same.logical_or(a.isfinite().logical_and(e.isfinite())).all().item<bool>()) return double.PositiveInfinity;
        double diff = torch.where(same, torch.zeros_like(a), a - e).abs().max().item<double>();
        var finite = e.isfinite();
        double reference = finite.any().item<bool>() ? e.masked_select(finite).abs().max().item<double>() : 0;
        double denominator = Math.Max(Math.Max(reference, scale), double.Epsilon);
        double error = diff / denominator;
        return double.IsNaN(error) ? double.PositiveInfinity : error;
    }

    /// <summary>Same shape and bit-for-bit the same values.</summary>
    public static bool Identical(Tensor a, Tensor b)
    {
        if (!a.shape.SequenceEqual(b.shape) || a.dtype != b.dtype) return false;
        using var equal = a.eq(b);
        using var all = equal.all();
        return all.item<bool>();
    }

    /// <summary>A random input of <paramref name="shape"/> laid out as <paramref name="layout"/> says.</summary>
    public static Tensor Input(long[] shape, Layout layout, ScalarType dtype, Device device)
    {
        int rank = shape.Length;
        switch (layout)
        {
            case Layout.Contiguous:
                return torch.randn(shape, dtype, device);
            case Layout.ChannelsLast:
                return ToChannelsLast(torch.randn(shape, dtype, device));
            case Layout.Transposed:
                {
                    // Rank 3 needs a 3-cycle: swapping the last two would be channels-last, which is dense.
                    long[] permutation = rank switch
                    {
                        2 => new long[] { 1, 0 },
                        3 => new long[] { 1, 2, 0 },
                        _ => Enumerable.Range(0, rank).Select(i => (long)(i == rank - 1 ? rank - 2 : i == rank - 2 ? rank - 1 : i)).ToArray(),
                    };
                    // Storage shape s with s[permutation[i]] = shape[i], so the view has the requested shape.
                    var storage = new long[rank];
                    for (int i = 0; i < rank; i++) storage[permutation[i]] = shape[i];
                    return torch.randn(storage, dtype, device).permute(permutation);
                }
            case Layout.Sliced:
                {
                    var big = (long[])shape.Clone();
                    big[1] *= 2;
                    if (rank > 2) big[rank - 1] += 2;
                    var view = torch.randn(big, dtype, device).slice(1, 0, big[1], 2);
                    return rank > 2 ? view.narrow(rank - 1, 1, shape[rank - 1]) : view;
                }
            default:
                throw new ArgumentOutOfRangeException(nameof(layout), layout, null);
        }
    }

    /// <summary>The same values in PyTorch's channels_last memory format (channels innermost).</summary>
    public static Tensor ToChannelsLast(Tensor t)
    {
        var (toLast, back) = ChannelsLastPermutations((int)t.ndim);
        return t.permute(toLast).contiguous().permute(back);
    }

    /// <summary>PyTorch's is_contiguous(memory_format=channels_last), which TorchSharp does not expose.</summary>
    public static bool IsChannelsLast(Tensor t)
    {
        if (t.ndim < 3) return false;
        using var permuted = t.permute(ChannelsLastPermutations((int)t.ndim).ToLast);
        return permuted.is_contiguous();
    }

    private static (long[] ToLast, long[] Back) ChannelsLastPermutations(int rank)
    {
        var toLast = new long[rank];
        var back = new long[rank];
        for (int i = 2; i < rank; i++) toLast[i - 1] = i;
        toLast[rank - 1] = 1;
        for (int i = 0; i < rank; i++) back[toLast[i]] = i;
        return (toLast, back);
    }

    /// <summary>Weight away from 1 and bias away from 0, so that a swapped or ignored parameter shows.</summary>
    public static (Tensor? Weight, Tensor? Bias) Parameters(Affine affine, long channels, ScalarType dtype, Device device)
    {
        var weight = affine is Affine.Both or Affine.WeightOnly ? torch.rand(channels, dtype, device) + 0.5 : null;
        var bias = affine is Affine.Both or Affine.BiasOnly ? torch.randn(channels, dtype, device) : null;
        return (weight, bias);
    }
}
