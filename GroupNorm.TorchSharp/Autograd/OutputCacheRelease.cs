using System;
using System.Collections.Generic;
using System.Reflection;
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
/// this, so the fields are found by reflection once; if a future TorchSharp renames them, nothing is
/// released and everything still works, only with the extra memory (a test flags that case).
/// </para>
/// </summary>
internal static class OutputCacheRelease
{
    private const BindingFlags Private = BindingFlags.NonPublic | BindingFlags.Instance;

    private static readonly FieldInfo? NodeField = typeof(autograd.AutogradContext).GetField("_node", Private);
    private static FieldInfo? s_cacheField;

    /// <summary>Whether this TorchSharp still has the internals this relies on (a test asserts it).</summary>
    internal static bool Supported =>
        NodeField is not null &&
        Array.Exists(NodeField.FieldType.Assembly.GetTypes(),
            t => t.IsSubclassOf(NodeField.FieldType) && t.GetField("_outputCache", Private)?.FieldType == typeof(List<Tensor>));

    public static void Release(autograd.AutogradContext ctx)
    {
        if (CacheOf(ctx) is not List<Tensor> cache) return;
        for (int i = 0; i < cache.Count; i++)
        {
            cache[i]?.Dispose();
            cache[i] = null!;
        }
    }

    private static List<Tensor>? CacheOf(autograd.AutogradContext ctx)
    {
        var node = NodeField?.GetValue(ctx);
        if (node is null) return null;
        var field = s_cacheField ??= node.GetType().GetField("_outputCache", Private);
        return field?.GetValue(node) as List<Tensor>;
    }
}
