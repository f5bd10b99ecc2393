using GroupNormalization.Kernels;

namespace GroupNormalization;

/// <summary>
/// The memory GroupNorm's fused CPU kernels recycle for their outputs (y, dx, the residual's gradient):
/// each output lives in a block this library keeps when libtorch frees the tensor, and the next output of
/// that size reuses it, so a training step maps no fresh pages for them whatever glibc's allocator settings.
/// Idle memory is bounded by the peak number of such outputs alive at once, and at most 1 GiB in all.
/// CUDA and the device-generic path use libtorch's allocator.
/// </summary>
public static class Memory
{
    /// <summary>Whether the fused CPU kernels' outputs come from recycled blocks (default true). Turning it off frees idle blocks as they return.</summary>
    public static bool recycle_outputs
    {
        get => RecycledMemory.Enabled;
        set => RecycledMemory.Enabled = value;
    }

    /// <summary>Bytes of recycled blocks currently idle (kept for the next outputs).</summary>
    public static long cached_bytes => RecycledMemory.IdleBytes;

    /// <summary>Frees every idle block, as <c>torch.cuda.empty_cache()</c> does for CUDA's caching allocator.</summary>
    public static void empty_cache() => RecycledMemory.Trim();
}
