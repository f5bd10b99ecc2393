using System;
using System.Collections;
using System.Collections.Generic;
using System.Linq;
using System.Reflection;
using GroupNormalization.Interop;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace GroupNormalization.Conversion;

/// <summary>
/// Swapping one child module for another everywhere its parent holds it, for the converters.
/// <para>
/// A module's child registry needs no TorchSharp internal: <c>register_module</c> removes an entry when given
/// null and appends otherwise, which is enough to swap a child in place. ModuleList and ModuleDict have public
/// setters. Only Sequential's item list is internal (<see cref="TorchSharpInternals.SequentialItemsOf"/>). The
/// reflection here reads the C# fields of the caller's own module classes (a <c>forward</c> reads its children
/// from fields, not from the registry); it names no TorchSharp member and cannot go missing.
/// </para>
/// </summary>
internal static class ModuleReplacement
{
    /// <summary>
    /// A place of a parent that cannot take the replacement because of its declared type.
    /// </summary>
    /// <param name="Member">
    /// <c>Owner.field</c> (a property's name for an auto-property's backing field); null when the place is the item
    /// list of <paramref name="Container"/> itself.
    /// </param>
    /// <param name="Declared">The type to change in source: the field's declared type, or the container's type.</param>
    /// <param name="Narrow">The type that cannot hold the replacement: <paramref name="Declared"/> itself or one of its type arguments.</param>
    /// <param name="Container">The ModuleList, ModuleDict or Sequential whose item type blocks; null for a field.</param>
    internal sealed record BlockedPlace(string? Member, Type Declared, Type Narrow, nn.Module? Container);

    /// <summary>What replacing a child in one parent takes: the stores to make, and the places that cannot take it.</summary>
    internal sealed record Plan(Action Store, IReadOnlyList<BlockedPlace> Blocked);

    /// <summary>
    /// Collects every place where <paramref name="parent"/> holds <paramref name="old"/> and whether it can take
    /// <paramref name="replacement"/>; the returned plan's store makes the stores. Nothing changes until it runs,
    /// and a caller runs it only when <see cref="Plan.Blocked"/> is empty.
    /// </summary>
    /// <remarks>
    /// Covers the child registry (<c>named_children</c>, which state_dict, parameters and <c>to()</c> read; positions
    /// kept), Sequential's item list, ModuleList and ModuleDict items, and the C# fields of the parent's classes
    /// (which <c>forward</c> reads), including lists and dictionaries in those fields.
    /// </remarks>
    /// <exception cref="NotSupportedException"><paramref name="parent"/> is a Sequential and <see cref="TorchSharpInternals.SequentialItemsFound"/> is false.</exception>
    internal static Plan PlanReplacement(nn.Module parent, nn.Module old, nn.Module replacement)
    {
        var stores = new List<Action>();
        var blocked = new List<BlockedPlace>();
        if (parent is Sequential sequential)
        {
            var items = TorchSharpInternals.SequentialItemsOf(sequential);
            for (int i = 0; i < items.Count; i++)
            {
                if (!ReferenceEquals(items[i], old)) continue;
                if (replacement is nn.IModule<Tensor, Tensor> item)
                {
                    int index = i;
                    stores.Add(() => items[index] = item);
                }
                else
                {
                    blocked.Add(new BlockedPlace(null, parent.GetType(), typeof(nn.IModule<Tensor, Tensor>), parent));
                }
            }
        }
        else
        {
            stores.Add(RegistryStore(parent, old, replacement));
        }

        if (GenericBase(parent.GetType(), typeof(ModuleList<>)) is Type listType)
            InvokeGeneric(nameof(AddModuleListStores), listType.GetGenericArguments()[0], parent, old, replacement, stores, blocked);
        if (GenericBase(parent.GetType(), typeof(ModuleDict<>)) is Type dictType)
            InvokeGeneric(nameof(AddModuleDictStores), dictType.GetGenericArguments()[0], parent, old, replacement, stores, blocked);
        AddFieldStores(parent, old, replacement, stores, blocked);

        return new Plan(() =>
        {
            foreach (var store in stores) store();
        }, blocked);
    }

    /// <summary>The action that puts <paramref name="replacement"/> at <paramref name="index"/> of <paramref name="sequential"/>, and only there.</summary>
    /// <exception cref="NotSupportedException"><see cref="TorchSharpInternals.SequentialItemsFound"/> is false.</exception>
    internal static Action PlanSequentialItem(Sequential sequential, int index, nn.Module<Tensor, Tensor> replacement)
    {
        var items = TorchSharpInternals.SequentialItemsOf(sequential);
        if ((uint)index >= (uint)items.Count) throw new ArgumentOutOfRangeException(nameof(index), index, $"index must be below {items.Count}.");
        return () => items[index] = replacement;
    }

    /// <summary>
    /// The modules <paramref name="parent"/> holds in the C# fields of its own classes, directly or in lists and
    /// dictionaries there (the containers' own storage excluded), each once.
    /// </summary>
    internal static IEnumerable<nn.Module> FieldReferences(nn.Module parent)
    {
        var seen = new HashSet<nn.Module>(ReferenceEqualityComparer.Instance);
        foreach (var (_, _, value) in Fields(parent))
        {
            switch (value)
            {
                case nn.Module module:
                    if (seen.Add(module)) yield return module;
                    break;
                case IList list:
                    foreach (var item in list.OfType<nn.Module>().ToList())
                    {
                        if (seen.Add(item)) yield return item;
                    }
                    break;
                case IDictionary dictionary:
                    foreach (var item in dictionary.Values.OfType<nn.Module>().ToList())
                    {
                        if (seen.Add(item)) yield return item;
                    }
                    break;
            }
        }
    }

    /// <summary>The first field of <paramref name="holder"/>'s classes that holds <paramref name="module"/> itself: <c>Owner.field</c> and its declared type.</summary>
    internal static (string member, Type declared)? FieldHolding(nn.Module holder, nn.Module module)
    {
        foreach (var (owner, field, value) in Fields(holder))
        {
            if (ReferenceEquals(value, module)) return (MemberName(owner, field), field.FieldType);
        }
        return null;
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

    private static void AddModuleListStores<T>(nn.Module parent, nn.Module old, nn.Module replacement, List<Action> stores, List<BlockedPlace> blocked)
        where T : nn.Module
    {
        var list = (ModuleList<T>)parent;
        for (int i = 0; i < list.Count; i++)
        {
            if (!ReferenceEquals(list[i], old)) continue;
            if (replacement is not T item)
            {
                blocked.Add(new BlockedPlace(null, parent.GetType(), typeof(T), parent));
                continue;
            }
            int index = i;
            stores.Add(() => list[index] = item);
        }
    }

    private static void AddModuleDictStores<T>(nn.Module parent, nn.Module old, nn.Module replacement, List<Action> stores, List<BlockedPlace> blocked)
        where T : nn.Module
    {
        var dict = (ModuleDict<T>)parent;
        foreach (var (key, value) in dict)
        {
            if (!ReferenceEquals(value, old)) continue;
            if (replacement is not T item)
            {
                blocked.Add(new BlockedPlace(null, parent.GetType(), typeof(T), parent));
                continue;
            }
            // The string indexer updates both the dictionary and the ordered list behind it.
            stores.Add(() => dict[key] = item);
        }
    }

    private static void InvokeGeneric(string method, Type itemType, nn.Module parent, nn.Module old, nn.Module replacement,
        List<Action> stores, List<BlockedPlace> blocked) =>
        typeof(ModuleReplacement).GetMethod(method, BindingFlags.NonPublic | BindingFlags.Static)!
            .MakeGenericMethod(itemType)
            .Invoke(null, BindingFlags.DoNotWrapExceptions, null, [parent, old, replacement, stores, blocked], null);

    /// <summary>The generic type built from <paramref name="definition"/> that <paramref name="type"/> is or derives from; null if none.</summary>
    internal static Type? GenericBase(Type? type, Type definition)
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

    // Every non-null instance field of the caller's classes between the module's type and nn.Module, with the class declaring it.
    private static IEnumerable<(Type owner, FieldInfo field, object value)> Fields(nn.Module parent)
    {
        for (var type = parent.GetType(); type is not null && type != typeof(nn.Module); type = type.BaseType)
        {
            if (IsContainerStorage(type)) continue;
            foreach (var field in type.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
            {
                if (field.GetValue(parent) is { } value) yield return (type, field, value);
            }
        }
    }

    // Owner.field, with an auto-property's backing field (<Norm>k__BackingField) named as the property.
    private static string MemberName(Type owner, FieldInfo field)
    {
        var name = field.Name;
        int end = name.IndexOf(">k__BackingField", StringComparison.Ordinal);
        if (name.StartsWith('<') && end > 1) name = name[1..end];
        return $"{owner.Name}.{name}";
    }

    private static void AddFieldStores(nn.Module parent, nn.Module old, nn.Module replacement, List<Action> stores, List<BlockedPlace> blocked)
    {
        var replacementType = replacement.GetType();
        foreach (var (owner, field, value) in Fields(parent))
        {
            if (ReferenceEquals(value, old))
            {
                if (field.FieldType.IsAssignableFrom(replacementType))
                    stores.Add(() => field.SetValue(parent, replacement));
                else
                    blocked.Add(new BlockedPlace(MemberName(owner, field), field.FieldType, field.FieldType, null));
            }
            else if (value is IList list && !list.IsReadOnly && !list.IsFixedSize)
            {
                var elementType = GenericArgument(list.GetType(), typeof(IList<>), 0);
                AddItemStores(owner, field, list.GetType(), elementType, ListIndices(list, old), i => list[(int)i] = replacement, replacement, stores, blocked);
            }
            else if (value is IDictionary dictionary && !dictionary.IsReadOnly)
            {
                var valueType = GenericArgument(dictionary.GetType(), typeof(IDictionary<,>), 1);
                var keys = dictionary.Keys.Cast<object>().Where(k => ReferenceEquals(dictionary[k], old)).ToList();
                AddItemStores(owner, field, dictionary.GetType(), valueType, keys, k => dictionary[k] = replacement, replacement, stores, blocked);
            }
        }
    }

    private static List<object> ListIndices(IList list, nn.Module old)
    {
        var indices = new List<object>();
        for (int i = 0; i < list.Count; i++)
        {
            if (ReferenceEquals(list[i], old)) indices.Add(i);
        }
        return indices;
    }

    private static void AddItemStores(Type owner, FieldInfo field, Type runtimeType, Type? itemType, List<object> slots, Action<object> store,
        nn.Module replacement, List<Action> stores, List<BlockedPlace> blocked)
    {
        if (slots.Count == 0) return;
        if (itemType is not null && !itemType.IsAssignableFrom(replacement.GetType()))
        {
            // Name the declared type when it spells the item type (List<T>, IDictionary<string, T>), else the object's own type.
            var declared = field.FieldType.IsGenericType && field.FieldType.GetGenericArguments().Contains(itemType) ? field.FieldType : runtimeType;
            blocked.Add(new BlockedPlace(MemberName(owner, field), declared, itemType, null));
            return;
        }
        foreach (var slot in slots) stores.Add(() => store(slot));
    }

    private static Type? GenericArgument(Type type, Type definition, int index) =>
        type.GetInterfaces()
            .Where(i => i.IsGenericType && i.GetGenericTypeDefinition() == definition)
            .Select(i => i.GetGenericArguments()[index])
            .FirstOrDefault();
}
