using System;
using System.Collections.Generic;
using System.Linq;
using System.Reflection;
using System.Runtime.InteropServices;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace GroupNormalization.Interop;

/// <summary>
/// Every place the library reaches past TorchSharp's public API.
/// <para>
/// The internals, each named exactly as TorchSharp 0.107 spells it:
/// <list type="bullet">
/// <item><c>AutogradContext._node</c> and <c>Node&lt;T&gt;._outputCache</c>: the spare output-sized tensor a
/// custom Function's graph node keeps, which <see cref="Autograd.OutputCacheRelease"/> frees.</item>
/// <item><c>Sequential._modules</c>: the list Sequential's forward runs through. Sequential has no public way to
/// replace an item, so the converters (<see cref="Conversion.BatchNormConverter"/>, <see cref="Conversion.GroupNormConverter"/>) write this list.</item>
/// <item>The native export <c>THSTensor_data</c> of LibTorchSharp: a tensor's data address, which the fused
/// kernels read and write through. TorchSharp's public equivalent (<c>storage&lt;T&gt;().data_ptr()</c>)
/// allocates a managed object per call, too much for a call that costs a few microseconds.</item>
/// <item>The native export <c>THSTensor_new</c> of LibTorchSharp: a tensor over memory we own, with a deleter
/// libtorch calls when the last reference goes, which <see cref="Kernels.RecycledMemory"/> builds outputs
/// from. TorchSharp's public constructors over memory take a managed array and their own deleter.</item>
/// </list>
/// Everything else the converter changes goes through public API or the caller's own classes (see
/// <see cref="Conversion.ModuleReplacement"/>): it names no TorchSharp member and cannot go missing.
/// </para>
/// <para>
/// Policy for a TorchSharp that lacks an internal. Each is looked up once, on first use, and reports whether
/// it was found (<see cref="All"/>; a test asserts every one is found in the version we ship against). The
/// library never fails where it used to work only because an internal is gone; it degrades in a fixed way:
/// <list type="bullet">
/// <item>Output cache missing: releasing it is a no-op. Results are unchanged; each graph node keeps one
/// extra output-sized tensor until the graph is freed, as any custom TorchSharp Function does.</item>
/// <item><c>Sequential._modules</c> missing: the converter throws <see cref="NotSupportedException"/> naming it,
/// before changing anything, when it would have to replace an item of a Sequential. Trees without Sequential
/// convert as before.</item>
/// <item><c>THSTensor_data</c> missing: <see cref="DataPointerAvailable"/> is false, the kernel selector uses
/// the device-generic path (same results, slower), and <see cref="DataPointer"/> throws
/// <see cref="NotSupportedException"/> if called anyway.</item>
/// <item><c>THSTensor_new</c> missing: <see cref="TensorOverAvailable"/> is false and the fused kernels'
/// outputs come from libtorch's allocator, as before recycling existed.</item>
/// </list>
/// </para>
/// </summary>
internal static unsafe class TorchSharpInternals
{
    private const BindingFlags Private = BindingFlags.NonPublic | BindingFlags.Instance;

    /// <summary>One internal: its name in TorchSharp, whether this TorchSharp has it, and what its absence costs.</summary>
    internal readonly record struct Internal(string Name, bool Found, string WhenMissing);

    /// <summary>Every internal the library uses, resolved (once) now.</summary>
    internal static IReadOnlyList<Internal> All =>
    [
        new(OutputCache.Name, OutputCache.Found, "output-cache release is a no-op: one extra output-sized tensor per graph node"),
        new(SequentialItems.Name, SequentialItems.Field is not null, "the converters throw NotSupportedException for layers inside a Sequential"),
        new(NativeData.Name, NativeData.Export != null, "the fused CPU kernels are off: the device-generic path runs instead"),
        new(NativeNew.Name, NativeNew.Export != null, "outputs are not recycled: they come from libtorch's allocator"),
    ];

    private static string TorchSharpVersion => typeof(torch).Assembly.GetName().Version?.ToString() ?? "unknown";

    // ---------------------------------------------------------------- output cache

    /// <summary>Whether <c>AutogradContext._node</c> and <c>Node&lt;T&gt;._outputCache</c> were found.</summary>
    internal static bool OutputCacheFound => OutputCache.Found;

    /// <summary>Disposes the spare output tensors of <paramref name="ctx"/>'s node; a no-op when the internals are missing.</summary>
    internal static void ReleaseOutputCache(autograd.AutogradContext ctx)
    {
        if (!OutputCache.Found || OutputCache.Of(ctx) is not List<Tensor> cache) return;
        for (int i = 0; i < cache.Count; i++)
        {
            cache[i]?.Dispose();
            cache[i] = null!;
        }
    }

    private static class OutputCache
    {
        internal const string Name = "TorchSharp.torch.autograd.AutogradContext._node / Node<T>._outputCache";

        private static readonly FieldInfo? NodeField = typeof(autograd.AutogradContext).GetField("_node", Private);

        // The node class is generic in the Function type, so the field is resolved per closed type; the library
        // defines one Function, so a single remembered entry suffices.
        private static CacheField? s_last;

        internal static readonly bool Found =
            NodeField?.FieldType is Type nodeBase
            && nodeBase.DeclaringType?.GetNestedTypes(BindingFlags.Public | BindingFlags.NonPublic)
                .Any(t => t.IsSubclassOf(nodeBase) && CacheFieldOf(t) is not null) == true;

        internal static List<Tensor>? Of(autograd.AutogradContext ctx)
        {
            var node = NodeField!.GetValue(ctx);
            if (node is null) return null;
            var type = node.GetType();
            var entry = s_last;
            if (entry is null || entry.Node != type) s_last = entry = new CacheField(type, CacheFieldOf(type));
            return entry.Field?.GetValue(node) as List<Tensor>;
        }

        private static FieldInfo? CacheFieldOf(Type nodeType) =>
            nodeType.GetField("_outputCache", Private) is { } f && f.FieldType == typeof(List<Tensor>) ? f : null;

        private sealed record CacheField(Type Node, FieldInfo? Field);
    }

    // ---------------------------------------------------------------- Sequential's items

    /// <summary>Whether <c>Sequential._modules</c> was found.</summary>
    internal static bool SequentialItemsFound => SequentialItems.Field is not null;

    /// <summary>The list <paramref name="sequential"/>'s forward runs through, to replace items in.</summary>
    /// <exception cref="NotSupportedException"><see cref="SequentialItemsFound"/> is false.</exception>
    internal static IList<nn.IModule<Tensor, Tensor>> SequentialItemsOf(Sequential sequential) => SequentialItems.Of(sequential);

    private static class SequentialItems
    {
        internal const string Name = "TorchSharp.Modules.Sequential._modules";

        internal static readonly FieldInfo? Field =
            typeof(Sequential).GetField("_modules", Private) is { } f && typeof(IList<nn.IModule<Tensor, Tensor>>).IsAssignableFrom(f.FieldType) ? f : null;

        internal static IList<nn.IModule<Tensor, Tensor>> Of(Sequential sequential) =>
            Field?.GetValue(sequential) as IList<nn.IModule<Tensor, Tensor>>
            ?? throw new NotSupportedException(
                $"Replacing a layer inside a Sequential needs {Name}, which TorchSharp {TorchSharpVersion} does not have. " +
                "This library is tested with TorchSharp 0.107; nothing in the model was changed.");
    }

    // ---------------------------------------------------------------- tensor data address

    /// <summary>Whether LibTorchSharp's <c>THSTensor_data</c> export was found; without it, <see cref="DataPointer"/> throws.</summary>
    /// <remarks>Resolved on first use. Ask with a tensor in hand: TorchSharp loads its native library before it creates any.</remarks>
    internal static bool DataPointerAvailable => NativeData.Export != null;

    /// <summary>
    /// Address of <paramref name="t"/>'s first element (storage offset included). The caller keeps
    /// <paramref name="t"/> alive (GC.KeepAlive) while the pointer is in use.
    /// </summary>
    /// <exception cref="NotSupportedException"><see cref="DataPointerAvailable"/> is false.</exception>
    internal static void* DataPointer(Tensor t)
    {
        var export = NativeData.Export;
        if (export == null)
            throw new NotSupportedException($"LibTorchSharp of TorchSharp {TorchSharpVersion} has no {NativeData.Name} export; check DataPointerAvailable first.");
        return (void*)export(t.Handle);
    }

    private static class NativeData
    {
        internal const string Name = "LibTorchSharp!THSTensor_data";

        // at::Tensor::data_ptr(): already offset by storage_offset() · element size.
        internal static readonly delegate* unmanaged<IntPtr, IntPtr> Export = Resolve();

        private static delegate* unmanaged<IntPtr, IntPtr> Resolve()
        {
            // Load it the way TorchSharp's own imports do (same package, same folder), so this is the copy already
            // in the process, never a second one found by probing from our assembly.
            if (NativeLibrary.TryLoad("LibTorchSharp", typeof(torch).Assembly, null, out var library)
                && NativeLibrary.TryGetExport(library, "THSTensor_data", out var export))
                return (delegate* unmanaged<IntPtr, IntPtr>)export;
            return null;
        }
    }

    // ---------------------------------------------------------------- tensor over our memory

    /// <summary>Whether LibTorchSharp's <c>THSTensor_new</c> export was found; without it, <see cref="TensorOver"/> throws.</summary>
    internal static bool TensorOverAvailable => NativeNew.Export != null;

    /// <summary>
    /// A contiguous CPU tensor of <paramref name="sizes"/> and <paramref name="dtype"/> over
    /// <paramref name="data"/>, which libtorch hands to <paramref name="deleter"/> when its storage dies
    /// (on whichever thread drops the last reference). Its storage cannot be resized.
    /// </summary>
    /// <exception cref="NotSupportedException"><see cref="TensorOverAvailable"/> is false.</exception>
    internal static Tensor TensorOver(void* data, ReadOnlySpan<long> sizes, ScalarType dtype, delegate* unmanaged<void*, void> deleter)
    {
        var export = NativeNew.Export;
        if (export == null)
            throw new NotSupportedException($"LibTorchSharp of TorchSharp {TorchSharpVersion} has no {NativeNew.Name} export; check TensorOverAvailable first.");
        IntPtr handle;
        fixed (long* dims = sizes)
            handle = export(data, deleter, dims, sizes.Length, (sbyte)dtype, (sbyte)dtype, (int)DeviceType.CPU, 0, 0);
        if (handle == IntPtr.Zero) torch.CheckForErrors();
        return Tensor.UnsafeCreateTensor(handle);
    }

    private static class NativeNew
    {
        internal const string Name = "LibTorchSharp!THSTensor_new";

        // (data, deleter, sizes, rank, stored type, tensor type, device type, device index, requires_grad):
        // torch::from_blob with the deleter; equal types and the CPU mean no copy.
        internal static readonly delegate* unmanaged<void*, delegate* unmanaged<void*, void>, long*, int, sbyte, sbyte, int, int, byte, IntPtr> Export = Resolve();

        private static delegate* unmanaged<void*, delegate* unmanaged<void*, void>, long*, int, sbyte, sbyte, int, int, byte, IntPtr> Resolve() =>
            NativeLibrary.TryLoad("LibTorchSharp", typeof(torch).Assembly, null, out var library)
            && NativeLibrary.TryGetExport(library, "THSTensor_new", out var export)
                ? (delegate* unmanaged<void*, delegate* unmanaged<void*, void>, long*, int, sbyte, sbyte, int, int, byte, IntPtr>)export
                : null;
    }
}
