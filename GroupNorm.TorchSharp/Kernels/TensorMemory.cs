using System;
using System.Reflection;
using System.Runtime.InteropServices;
using TorchSharp;
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
internal static unsafe partial class TensorMemory
{
    static TensorMemory()
    {
        // Resolve LibTorchSharp exactly as TorchSharp did (same package, same folder), rather than
        // letting our assembly probe on its own and possibly find a different copy.
        NativeLibrary.SetDllImportResolver(typeof(TensorMemory).Assembly, ResolveTorchSharpNative);
    }

    private static IntPtr ResolveTorchSharpNative(string name, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (name == LibTorchSharp && NativeLibrary.TryLoad(name, typeof(torch).Assembly, searchPath, out var handle))
            return handle;
        return IntPtr.Zero;
    }

    private const string LibTorchSharp = "LibTorchSharp";

    // at::Tensor::data_ptr(): already offset by storage_offset() · element size.
    [LibraryImport(LibTorchSharp, EntryPoint = "THSTensor_data")]
    private static partial IntPtr THSTensor_data(IntPtr tensor);

    /// <summary>
    /// Address of the tensor's first element. The caller keeps <paramref name="t"/> alive
    /// (GC.KeepAlive) for as long as the pointer is in use.
    /// </summary>
    public static T* Pointer<T>(Tensor t) where T : unmanaged => (T*)THSTensor_data(t.Handle);

    /// <summary>
    /// The dense layout of a tensor of rank ≥ 2, or null when it is neither row-major nor channels-last
    /// (a slice, a transpose, an expanded view). Dimensions of size 1 may carry any stride, as in PyTorch.
    /// </summary>
    public static ChannelLayout? DenseLayout(long[] shape, long[] strides)
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

    private static bool IsDenseInOrder(long[] shape, long[] strides, ReadOnlySpan<int> order)
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

    /// <summary>A dense copy of <paramref name="t"/> in the given layout (no copy when it already is).</summary>
    public static Tensor ToLayout(Tensor t, ChannelLayout layout)
    {
        if (DenseLayout(t.shape, t.stride()) == layout) return t.alias();
        if (layout == ChannelLayout.ChannelsFirst) return t.contiguous();

        int rank = (int)t.ndim;
        var toLast = new long[rank];
        var back = new long[rank];
        toLast[0] = 0;
        for (int i = 2; i < rank; i++) toLast[i - 1] = i;
        toLast[rank - 1] = 1;
        for (int i = 0; i < rank; i++) back[toLast[i]] = i;
        using var permuted = t.permute(toLast);
        using var dense = permuted.contiguous();
        return dense.permute(back);
    }
}
