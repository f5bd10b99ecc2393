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
/// Swapping one child module for another everywhere its parent holds it, for <see cref="BatchNormConverter"/>.
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
    /// Checks that every place where <paramref name="parent"/> holds <paramref name="old"/> can take
    /// <paramref name="replacement"/>, and returns the action that makes all the stores. Nothing changes until it runs.
    /// </summary>
    /// <remarks>
    /// Covers the child registry (<c>named_children</c>, which state_dict, parameters and <c>to()</c> read; positions
    /// kept), Sequential's item list, ModuleList and ModuleDict items, and the C# fields of the parent's classes
    /// (which <c>forward</c> reads), including lists and dictionaries in those fields.
    /// </remarks>
    /// <exception cref="InvalidOperationException">A field or container of <paramref name="parent"/> is typed so it cannot hold the replacement.</exception>
    /// <exception cref="NotSupportedException"><paramref name="parent"/> is a Sequential and <see cref="TorchSharpInternals.SequentialItemsFound"/> is false.</exception>
    internal static Action PlanReplacement(nn.Module parent, nn.Module old, nn.Module replacement)
    {
        var stores = new List<Action>();
        if (parent is Sequential sequential)
        {
            if (replacement is not nn.IModule<Tensor, Tensor> item)
                throw new InvalidOperationException($"A Sequential cannot hold a {replacement.GetType().Name}: it is not a Module<Tensor, Tensor>.");
            var items = TorchSharpInternals.SequentialItemsOf(sequential);
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
    /// <exception cref="NotSupportedException"><see cref="TorchSharpInternals.SequentialItemsFound"/> is false.</exception>
    internal static Action PlanSequentialItem(Sequential sequential, int index, nn.Module<Tensor, Tensor> replacement)
    {
        var items = TorchSharpInternals.SequentialItemsOf(sequential);
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
        typeof(ModuleReplacement).GetMethod(method, BindingFlags.NonPublic | BindingFlags.Static)!
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
