using GroupNormalization.Interop;
using static TorchSharp.torch;

namespace GroupNormalization.Autograd;

/// <summary>
/// Frees the spare output-sized tensor that TorchSharp's custom-Function machinery allocates for every
/// graph node, as soon as <c>apply</c> returns.
/// <para>
/// Why: TorchSharp keeps an <c>empty_like(output)</c> per node ("output cache") to materialize zero
/// gradients, and holds it until the graph is destroyed. A network with k GroupNorm layers would hold k
/// extra activation-sized blocks through every forward+backward that libtorch's built-in op does not:
/// real device memory on CUDA (the caching allocator reserves it), address space and allocator pressure
/// on CPU. Releasing it keeps our peak memory equal to the built-in's.
/// </para>
/// <para>
/// Safety: <see cref="GroupNormFunction"/> turns materialize_grads off, so TorchSharp never reads the
/// cache, and its backward handles an undefined incoming gradient itself. TorchSharp exposes no API for
/// this; the private fields are reached through <see cref="TorchSharpInternals"/>, and if a future
/// TorchSharp renames them nothing is released and everything still works, only with the extra memory.
/// </para>
/// </summary>
internal static class OutputCacheRelease
{
    /// <summary>Whether this TorchSharp still has the internals this relies on (a test asserts it).</summary>
    internal static bool Supported => TorchSharpInternals.OutputCacheFound;

    public static void Release(autograd.AutogradContext ctx) => TorchSharpInternals.ReleaseOutputCache(ctx);
}
