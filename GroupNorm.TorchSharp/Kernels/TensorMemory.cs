using System;
using GroupNormalization.Interop;
using static TorchSharp.torch;

namespace GroupNormalization.Kernels;

/// <summary>How a dense tensor's channels are laid out in memory, as far as the fused kernels care.</summary>
internal enum ChannelLayout
{
    /// <summary>Row-major (N, C, *spatial): each channel plane is contiguous.</summary>
    ChannelsFirst,

    /// <summary>(N, *spatial, C) in memory, PyTorch's channels_last: channels are innermost.</summary>
    ChannelsLast,
}

/// <summary>Raw access to CPU tensor memory, and layout detection.</summary>
internal static unsafe class TensorMemory
{
    /// <summary>
    /// Address of the tensor's first element. The caller keeps <paramref name="t"/> alive
    /// (GC.KeepAlive) for as long as the pointer is in use; only valid when
    /// <see cref="TorchSharpInternals.DataPointerAvailable"/> is true.
    /// </summary>
    public static T* Pointer<T>(Tensor t) where T : unmanaged => (T*)TorchSharpInternals.DataPointer(t);

    /// <summary>
    /// The dense layout of <paramref name="t"/> (rank ≥ 2), read dimension by dimension: TorchSharp's
    /// whole-array <c>shape</c> and <c>stride()</c> cost about 2 µs per call through a marshalled callback,
    /// a tenth of a small GroupNorm.
    /// </summary>
    public static ChannelLayout? DenseLayout(Tensor t)
    {
        // Row-major is by far the common case, and libtorch answers it in one call.
        if (t.is_contiguous()) return ChannelLayout.ChannelsFirst;
        int rank = (int)t.ndim;
        Span<long> shape = stackalloc long[rank];
        Span<long> strides = stackalloc long[rank];
        for (int i = 0; i < rank; i++)
        {
            shape[i] = t.size(i);
            strides[i] = t.stride(i);
        }
        return DenseLayout(shape, strides);
    }

    /// <summary>
    /// The dense layout of a tensor of rank ≥ 2, or null when it is neither row-major nor channels-last
    /// (a slice, a transpose, an expanded view). Dimensions of size 1 may carry any stride, as in PyTorch.
    /// </summary>
    public static ChannelLayout? DenseLayout(ReadOnlySpan<long> shape, ReadOnlySpan<long> strides)
    {
        int rank = shape.Length;
        Span<int> order = stackalloc int[rank];

        for (int i = 0; i < rank; i++) order[i] = i;
        if (IsDenseInOrder(shape, strides, order)) return ChannelLayout.ChannelsFirst;

        // Memory order N, spatial..., C (innermost last).
        order[0] = 0;
        for (int i = 2; i < rank; i++) order[i - 1] = i;
        order[rank - 1] = 1;
        if (IsDenseInOrder(shape, strides, order)) return ChannelLayout.ChannelsLast;

        return null;
    }

    private static bool IsDenseInOrder(ReadOnlySpan<long> shape, ReadOnlySpan<long> strides, ReadOnlySpan<int> order)
    {
        long expected = 1;
        for (int k = order.Length - 1; k >= 0; k--)
        {
            int d = order[k];
            if (shape[d] == 1) continue;
            if (strides[d] != expected) return false;
            expected *= shape[d];
        }
        return true;
    }

    /// <summary><paramref name="t"/> itself when it is contiguous (or null), else a contiguous copy the caller disposes.</summary>
    public static Tensor? ContiguousOrSelf(Tensor? t) => t is null || t.is_contiguous() ? t : t.contiguous();

    /// <summary>A dense copy of <paramref name="t"/> in <paramref name="layout"/>, or null when it already is dense that way.</summary>
    public static Tensor? CopyUnlessIn(Tensor t, ChannelLayout layout) =>
        DenseLayout(t) == layout ? null : DenseCopy(t, layout);

    /// <summary>A dense copy of <paramref name="t"/> in <paramref name="layout"/>, for a caller that knows it is not.</summary>
    public static Tensor DenseCopy(Tensor t, ChannelLayout layout)
    {
        if (layout == ChannelLayout.ChannelsFirst) return t.contiguous();

        var (toLast, back) = ChannelsLastOrder((int)t.ndim);
        using var permuted = t.permute(toLast);
        using var dense = permuted.contiguous();
        return dense.permute(back);
    }

    /// <summary>
    /// The permutation that takes (N, C, *spatial) to channels-last memory order, (N, *spatial, C), and the
    /// one that takes it back: toLast[i] is the logical dimension at physical position i.
    /// </summary>
    public static (long[] ToLast, long[] Back) ChannelsLastOrder(int rank)
    {
        var toLast = new long[rank];
        var back = new long[rank];
        toLast[0] = 0;
        for (int i = 2; i < rank; i++) toLast[i - 1] = i;
        toLast[rank - 1] = 1;
        for (int i = 0; i < rank; i++) back[toLast[i]] = i;
        return (toLast, back);
    }
}
