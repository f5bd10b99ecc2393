using System;
using System.Collections.Generic;
using System.Runtime.InteropServices;
using GroupNormalization.Interop;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Kernels;

/// <summary>
/// Memory for the fused CPU kernels' input-sized outputs (y, dx, the residual's gradient) that this library
/// recycles itself: each output is a tensor over a block of ours, and when libtorch drops the tensor's last
/// reference the block goes back to a free list of its size instead of to glibc.
/// <para>
/// Why: a training step allocates the same sizes in the same order every time. glibc with its default
/// settings returns freed memory at the top of the heap, and large blocks, to the system, so the next step
/// maps them again and touches every page for the first time: a minor page fault per 4 KiB, 10–20 µs each
/// on the virtual machines we measure on. Blocks kept here are mapped once.
/// </para>
/// <para>
/// Bound: a block is only ever idle after it was in use, so the idle memory per size never exceeds the
/// largest number of our outputs of that size alive at once (peak use); <see cref="MaxIdleBytes"/> caps the
/// total on top of that, and <see cref="Trim"/> frees every idle block.
/// </para>
/// </summary>
internal static unsafe class RecycledMemory
{
    /// <summary>Idle bytes kept at most; a block freed beyond this goes back to the system.</summary>
    public const long MaxIdleBytes = 1L << 30;

    /// <summary>
    /// Smaller outputs come from libtorch's allocator. A tensor over our block costs a few native calls more
    /// than libtorch's own (measured on (1, 64, 16, 16): 0.3 µs for a graph-recording forward, 3.4 µs for
    /// forward+backward with its two outputs), which a call of a few microseconds notices and an output of
    /// fewer than four pages cannot win back in page faults.
    /// </summary>
    public const long SmallestRecycledBytes = 16 * 1024;

    /// <summary>
    /// Room before each block's data for its size, which the deleter (given only the data address) needs;
    /// 64 bytes keeps the data as aligned as libtorch's own allocator keeps it.
    /// </summary>
    private const int Header = 64;

    private static readonly object s_lock = new();
    private static readonly Dictionary<long, Stack<IntPtr>> s_idle = new();
    private static long s_idleBytes;

    /// <summary>Whether outputs are recycled (default on where LibTorchSharp allows it).</summary>
    public static bool Enabled { get; set; } = true;

    /// <summary>Bytes held in idle blocks now.</summary>
    public static long IdleBytes
    {
        get
        {
            lock (s_lock) return s_idleBytes;
        }
    }

    /// <summary>
    /// An uninitialised CPU tensor of <paramref name="like"/>'s shape and dtype, dense in
    /// <paramref name="layout"/> (which <paramref name="like"/> is dense in too): over a recycled block when
    /// <see cref="Enabled"/>, else libtorch's own.
    /// </summary>
    public static Tensor Empty(Tensor like, ChannelLayout layout)
    {
        long bytes = like.NumberOfElements * like.element_size();
        // The callers' tensors are already dense in the layout, which empty_like keeps.
        if (!Enabled || !TorchSharpInternals.TensorOverAvailable || bytes < SmallestRecycledBytes) return torch.empty_like(like);
        int rank = (int)like.ndim;
        bool channelsLast = layout == ChannelLayout.ChannelsLast && rank >= 3;
        // Channels-last memory is a row-major (N, *spatial, C) block seen through a permutation.
        var (toLast, back) = channelsLast ? TensorMemory.ChannelsLastOrder(rank) : default;
        Span<long> physical = stackalloc long[rank];
        for (int i = 0; i < rank; i++) physical[i] = like.size(channelsLast ? (int)toLast![i] : i);
        var dense = TorchSharpInternals.TensorOver(Rent(bytes), physical, like.dtype, &Return);
        if (!channelsLast) return dense;
        // Detached, so that autograd does not see a view made inside our Function: it would refuse the
        // in-place ops (relu_, add_) that follow a norm in most networks.
        using (dense)
        using (var permuted = dense.permute(back!))
            return permuted.detach();
    }

    /// <summary>Frees every idle block.</summary>
    public static void Trim()
    {
        lock (s_lock)
        {
            foreach (var stack in s_idle.Values)
            {
                while (stack.Count > 0) NativeMemory.AlignedFree((void*)stack.Pop());
            }
            s_idleBytes = 0;
        }
    }

    private static void* Rent(long bytes)
    {
        lock (s_lock)
        {
            if (s_idle.TryGetValue(bytes, out var stack) && stack.Count > 0)
            {
                s_idleBytes -= bytes;
                return (byte*)stack.Pop() + Header;
            }
        }
        var block = (byte*)NativeMemory.AlignedAlloc((nuint)(bytes + Header), Header);
        *(long*)block = bytes;
        return block + Header;
    }

    // Called by libtorch, on whichever thread releases the storage, with the data address it was given.
    [UnmanagedCallersOnly]
    private static void Return(void* data)
    {
        var block = (byte*)data - Header;
        long bytes = *(long*)block;
        lock (s_lock)
        {
            if (Enabled && s_idleBytes + bytes <= MaxIdleBytes)
            {
                if (!s_idle.TryGetValue(bytes, out var stack)) s_idle[bytes] = stack = new Stack<IntPtr>(4);
                stack.Push((IntPtr)block);
                s_idleBytes += bytes;
                return;
            }
        }
        NativeMemory.AlignedFree(block);
    }
}
