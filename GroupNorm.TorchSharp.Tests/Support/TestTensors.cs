using System;
using System.Linq;
using GroupNormalization.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Support;
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

    /// <summary>The largest of some error values, +∞ if any is NaN (NUnit orders NaN below every bound).</summary>
    public static double Worst(Tensor errors)
    {
        double worst = errors.max().item<double>();
        return double.IsNaN(worst) ? double.PositiveInfinity : worst;
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

    /// <summary>
    /// The same values in PyTorch's channels_last memory format (channels innermost), made by the library's
    /// own conversion (TorchSharp has no contiguous(memory_format)).
    /// </summary>
    public static Tensor ToChannelsLast(Tensor t) => TensorMemory.DenseCopy(t, ChannelLayout.ChannelsLast);

    /// <summary>PyTorch's is_contiguous(memory_format=channels_last), which TorchSharp does not expose.</summary>
    public static bool IsChannelsLast(Tensor t)
    {
        if (t.ndim < 3) return false;
        using var permuted = t.permute(ChannelsLastOrder((int)t.ndim));
        return permuted.is_contiguous();
    }

    /// <summary>The permutation that puts the channel dimension last: (0, 2, …, rank − 1, 1).</summary>
    private static long[] ChannelsLastOrder(int rank)
    {
        var order = new long[rank];
        for (int i = 2; i < rank; i++) order[i - 1] = i;
        order[rank - 1] = 1;
        return order;
    }

    /// <summary>Weight away from 1 and bias away from 0, so that a swapped or ignored parameter shows.</summary>
    public static (Tensor? Weight, Tensor? Bias) Parameters(Affine affine, long channels, ScalarType dtype, Device device)
    {
        var weight = affine is Affine.Both or Affine.WeightOnly ? torch.rand(channels, dtype, device) + 0.5 : null;
        var bias = affine is Affine.Both or Affine.BiasOnly ? torch.randn(channels, dtype, device) : null;
        return (weight, bias);
    }
}
