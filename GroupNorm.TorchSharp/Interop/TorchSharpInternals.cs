using System;
using System.Collections;
using System.Collections.Generic;
using System.Linq;
using System.Reflection;
using System.Runtime.InteropServices;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace GroupNormalization.Interop;

/// <summary>
/// Every place the library reaches past TorchSharp's public API, and every use of reflection on modules.
/// <para>
/// The internals, each named exactly as TorchSharp 0.107 spells it:
/// <list type="bullet">
/// <item><c>AutogradContext._node</c> and <c>Node&lt;T&gt;._outputCache</c>: the spare output-sized tensor a
/// custom Function's graph node keeps, which <see cref="Autograd.OutputCacheRelease"/> frees.</item>
/// <item><c>Sequential._modules</c>: the list Sequential's forward runs through. Sequential has no public way to
/// replace an item, so <see cref="Conversion.BatchNormConverter"/> writes this list.</item>
/// <item>The native export <c>THSTensor_data</c> of LibTorchSharp: a tensor's data address, which the fused
/// kernels read and write through. TorchSharp's public equivalent (<c>storage&lt;T&gt;().data_ptr()</c>)
/// allocates a managed object per call, too much for a call that costs a few microseconds.</item>
/// </list>
/// A module's child registry needs no internal: <c>register_module</c> removes an entry when given null and
/// appends otherwise, which is enough to swap a child in place (see <see cref="PlanReplacement"/>).
/// ModuleList and ModuleDict have public setters. The remaining reflection reads the C# fields of the
/// caller's own module classes (a <c>forward</c> reads its children from fields, not from the registry);
/// it names no TorchSharp member and cannot go missing.
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
        new(SequentialItems.Name, SequentialItems.Field is not null, "BatchNormConverter throws NotSupportedException for layers inside a Sequential"),
        new(NativeData.Name, NativeData.Export != null, "the fused CPU kernels are off: the device-generic path runs instead"),
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

    // ---------------------------------------------------------------- replacing a child

    /// <summary>
    /// Checks that every place where <paramref name="parent"/> holds <paramref name="old"/> can take
    /// <paramref name="replacement"/>, and returns the action that makes all the stores. Nothing changes until it runs.
    /// </summary>
    /// <remarks>
    /// Covers the child registry (<c>named_children</c>, which state_dict, parameters and <c>to()</c> read; positions
    /// kept), Sequential's item list, ModuleList and ModuleDict items, and the C# fields of the parent's classes
    /// (which <c>forward</c> reads), including lists and dictionaries in those fields.
    /// </remarks>
    /// <exception cref="InvalidOperationException">A field or container of <paramref name="parent"/> is typed so it cannot hold the replacement.</exception>
    /// <exception cref="NotSupportedException"><paramref name="parent"/> is a Sequential and <see cref="SequentialItemsFound"/> is false.</exception>
    internal static Action PlanReplacement(nn.Module parent, nn.Module old, nn.Module replacement)
    {
        var stores = new List<Action>();
        if (parent is Sequential sequential)
        {
            if (replacement is not nn.IModule<Tensor, Tensor> item)
                throw new InvalidOperationException($"A Sequential cannot hold a {replacement.GetType().Name}: it is not a Module<Tensor, Tensor>.");
            var items = SequentialItems.Of(sequential);
            for (int i = 0; i < items.Count; i++)
            {
                int index = i;
                if (ReferenceEquals(items[i], old)) stores.Add(() => items[index] = item);
            }
        }
        else
        {
            stores.Add(RegistryStore(parent, old, replacement));
        }

        if (GenericBase(parent.GetType(), typeof(ModuleList<>)) is Type listType)
            InvokeGeneric(nameof(AddModuleListStores), listType.GetGenericArguments()[0], parent, old, replacement, stores);
        if (GenericBase(parent.GetType(), typeof(ModuleDict<>)) is Type dictType)
            InvokeGeneric(nameof(AddModuleDictStores), dictType.GetGenericArguments()[0], parent, old, replacement, stores);
        AddFieldStores(parent, old, replacement, stores);

        return () =>
        {
            foreach (var store in stores) store();
        };
    }

    /// <summary>The action that puts <paramref name="replacement"/> at <paramref name="index"/> of <paramref name="sequential"/>, and only there.</summary>
    /// <exception cref="NotSupportedException"><see cref="SequentialItemsFound"/> is false.</exception>
    internal static Action PlanSequentialItem(Sequential sequential, int index, nn.Module<Tensor, Tensor> replacement)
    {
        var items = SequentialItems.Of(sequential);
        if ((uint)index >= (uint)items.Count) throw new ArgumentOutOfRangeException(nameof(index), index, $"index must be below {items.Count}.");
        return () => items[index] = replacement;
    }

    // register_module(name, null) removes an entry and register_module(name, m) appends one, so re-registering the
    // entries from the first match on keeps every name at its position (and state_dict's key order with it).
    private static Action RegistryStore(nn.Module parent, nn.Module old, nn.Module replacement) => () =>
    {
        var children = parent.named_children().ToList();
        int first = children.FindIndex(c => ReferenceEquals(c.module, old));
        if (first < 0) return;
        for (int i = first; i < children.Count; i++) parent.register_module(children[i].name, null!);
        for (int i = first; i < children.Count; i++)
            parent.register_module(children[i].name, ReferenceEquals(children[i].module, old) ? replacement : children[i].module);
    };

    private static void AddModuleListStores<T>(nn.Module parent, nn.Module old, nn.Module replacement, List<Action> stores) where T : nn.Module
    {
        var list = (ModuleList<T>)parent;
        for (int i = 0; i < list.Count; i++)
        {
            if (!ReferenceEquals(list[i], old)) continue;
            if (replacement is not T item)
                throw new InvalidOperationException($"A ModuleList<{typeof(T).Name}> cannot hold a {replacement.GetType().Name}.");
            int index = i;
            stores.Add(() => list[index] = item);
        }
    }

    private static void AddModuleDictStores<T>(nn.Module parent, nn.Module old, nn.Module replacement, List<Action> stores) where T : nn.Module
    {
        var dict = (ModuleDict<T>)parent;
        foreach (var (key, value) in dict)
        {
            if (!ReferenceEquals(value, old)) continue;
            if (replacement is not T item)
                throw new InvalidOperationException($"A ModuleDict<{typeof(T).Name}> cannot hold a {replacement.GetType().Name}.");
            // The string indexer updates both the dictionary and the ordered list behind it.
            stores.Add(() => dict[key] = item);
        }
    }

    private static void InvokeGeneric(string method, Type itemType, nn.Module parent, nn.Module old, nn.Module replacement, List<Action> stores) =>
        typeof(TorchSharpInternals).GetMethod(method, BindingFlags.NonPublic | BindingFlags.Static)!
            .MakeGenericMethod(itemType)
            .Invoke(null, BindingFlags.DoNotWrapExceptions, null, [parent, old, replacement, stores], null);

    private static Type? GenericBase(Type? type, Type definition)
    {
        for (; type is not null; type = type.BaseType)
        {
            if (type.IsGenericType && type.GetGenericTypeDefinition() == definition) return type;
        }
        return null;
    }

    // The containers' own storage is handled above through their API; their private fields are not ours to write.
    private static bool IsContainerStorage(Type type) =>
        type == typeof(Sequential)
        || (type.IsGenericType && (type.GetGenericTypeDefinition() == typeof(ModuleList<>) || type.GetGenericTypeDefinition() == typeof(ModuleDict<>)));

    private static void AddFieldStores(nn.Module parent, nn.Module old, nn.Module replacement, List<Action> stores)
    {
        var replacementType = replacement.GetType();
        for (var type = parent.GetType(); type is not null && type != typeof(nn.Module); type = type.BaseType)
        {
            if (IsContainerStorage(type)) continue;
            foreach (var field in type.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
            {
                var value = field.GetValue(parent);
                if (value is null) continue;

                if (ReferenceEquals(value, old))
                {
                    if (!field.FieldType.IsAssignableFrom(replacementType))
                        throw new InvalidOperationException(
                            $"{type.Name}.{field.Name} is typed {field.FieldType.Name} and cannot hold a {replacementType.Name}; declare it as Module<Tensor, Tensor> to let the converter replace it.");
                    stores.Add(() => field.SetValue(parent, replacement));
                }
                else if (value is IList list && !list.IsReadOnly && !list.IsFixedSize)
                {
                    AddListStores(type, field, list, old, replacement, stores);
                }
                else if (value is IDictionary dictionary && !dictionary.IsReadOnly)
                {
                    AddDictionaryStores(type, field, dictionary, old, replacement, stores);
                }
            }
        }
    }

    private static void AddListStores(Type owner, FieldInfo field, IList list, nn.Module old, nn.Module replacement, List<Action> stores)
    {
        var elementType = list.GetType().GetInterfaces()
            .Where(i => i.IsGenericType && i.GetGenericTypeDefinition() == typeof(IList<>))
            .Select(i => i.GetGenericArguments()[0])
            .FirstOrDefault();
        for (int i = 0; i < list.Count; i++)
        {
            if (!ReferenceEquals(list[i], old)) continue;
            if (elementType is not null && !elementType.IsAssignableFrom(replacement.GetType()))
                throw new InvalidOperationException($"{owner.Name}.{field.Name} holds {elementType.Name} items and cannot hold a {replacement.GetType().Name}.");
            int index = i;
            stores.Add(() => list[index] = replacement);
        }
    }

    private static void AddDictionaryStores(Type owner, FieldInfo field, IDictionary dictionary, nn.Module old, nn.Module replacement, List<Action> stores)
    {
        var valueType = dictionary.GetType().IsGenericType ? dictionary.GetType().GetGenericArguments().ElementAtOrDefault(1) : null;
        foreach (var key in dictionary.Keys.Cast<object>().ToList())
        {
            if (!ReferenceEquals(dictionary[key], old)) continue;
            if (valueType is not null && !valueType.IsAssignableFrom(replacement.GetType()))
                throw new InvalidOperationException($"{owner.Name}.{field.Name} holds {valueType.Name} values and cannot hold a {replacement.GetType().Name}.");
            stores.Add(() => dictionary[key] = replacement);
        }
    }
}
