using System;
using System.Collections;
using System.Collections.Generic;
using System.Linq;
using System.Reflection;
using System.Runtime.CompilerServices;
using TorchSharp;
using TorchSharp.Modules;

namespace GroupNormalization.Conversion;

/// <summary>
/// Replaces every BatchNorm1d, BatchNorm2d and BatchNorm3d in a TorchSharp module tree with a
/// <see cref="GroupNorm"/> on the same device and dtype, so that a model written for BatchNorm trains
/// with small batches.
/// <para>
/// A TorchSharp module can hold a child in three places: its registry (<c>named_children()</c>, which
/// <c>state_dict</c>, <c>parameters()</c> and <c>to()</c> read), the C# fields its <c>forward</c> reads
/// (torchvision's <c>ResNet.bn1</c>), and containers' own lists (<c>Sequential</c>, <c>ModuleList</c>,
/// <c>ModuleDict</c>). The converter updates all three in place, keeping each child's name and position,
/// so forward, state_dict keys and the optimizer's view of the parameters all see the new layer.
/// </para>
/// <para>
/// Limits: a BatchNorm kept only in a C# field typed as BatchNorm (rather than <c>Module</c> or
/// <c>Module&lt;Tensor, Tensor&gt;</c>) cannot hold a GroupNorm and is reported with an exception before
/// anything of that parent changes; a BatchNorm captured in a lambda or held outside the tree is not seen.
/// Build the optimizer after converting: it must see the new parameters.
/// </para>
/// </summary>
public static class BatchNormConverter
{
    // The registry behind named_children(); TorchSharp exposes no public way to swap an entry in place.
    private static readonly FieldInfo RegistryField =
        typeof(torch.nn.Module).GetField("_internal_submodules", BindingFlags.Instance | BindingFlags.NonPublic)
        ?? throw new MissingFieldException(typeof(torch.nn.Module).FullName, "_internal_submodules");

    /// <summary>Replaces the BatchNorm layers under <paramref name="model"/> (not the model itself) with GroupNorm.</summary>
    /// <param name="model">Root of the module tree; changed in place.</param>
    /// <param name="options">How to choose groups, eps and affine parameters; null for the defaults.</param>
    /// <returns>The replaced layers, with the number of groups each got.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="model"/> is itself a BatchNorm: wrap it in a container first.</exception>
    /// <exception cref="InvalidOperationException">A parent keeps a BatchNorm in a field whose type cannot hold a GroupNorm.</exception>
    public static BatchNormConversionReport Convert(torch.nn.Module model, BatchNormConversionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (model is BatchNorm)
            throw new ArgumentException($"The model is itself a {model.GetType().Name}; a module cannot replace itself, so wrap it (e.g. in a Sequential) first.", nameof(model));
        options ??= new BatchNormConversionOptions();

        var replacements = new Dictionary<BatchNorm, GroupNorm>(ReferenceEqualityComparer.Instance);
        var layers = new List<ConvertedLayer>();
        var visited = new HashSet<torch.nn.Module>(ReferenceEqualityComparer.Instance);
        ConvertChildren(model, "", options, replacements, layers, visited);

        if (options.dispose_replaced)
        {
            foreach (var old in replacements.Keys) old.Dispose();
        }
        return new BatchNormConversionReport(layers);
    }

    private static void ConvertChildren(
        torch.nn.Module parent,
        string prefix,
        BatchNormConversionOptions options,
        Dictionary<BatchNorm, GroupNorm> replacements,
        List<ConvertedLayer> layers,
        HashSet<torch.nn.Module> visited)
    {
        if (!visited.Add(parent)) return;

        // Snapshot: the registry is rewritten while we walk it.
        foreach (var (name, child) in parent.named_children().ToList())
        {
            if (child is BatchNorm bn)
            {
                if (!replacements.TryGetValue(bn, out var gn))
                {
                    gn = CreateReplacement(bn, options);
                    replacements.Add(bn, gn);
                    layers.Add(new ConvertedLayer(prefix + name, bn.GetType().Name, bn.num_features, gn.num_groups));
                }
                Replace(parent, name, bn, gn);
            }
            else
            {
                ConvertChildren(child, prefix + name + ".", options, replacements, layers, visited);
            }
        }
    }

    private static GroupNorm CreateReplacement(BatchNorm bn, BatchNormConversionOptions options)
    {
        // BatchNorm without affine parameters still has running statistics; either one tells the placement.
        var reference = bn.affine ? bn.weight : bn.running_mean;
        var device = reference?.device;
        var dtype = reference?.dtype;
        var affine = options.affine ?? bn.affine;
        var gn = new GroupNorm(options.choose_num_groups(bn.num_features), bn.num_features, options.eps ?? bn.eps, affine, device, dtype);

        if (affine && bn.affine && gn.weight is not null && gn.bias is not null)
        {
            using (torch.no_grad())
            {
                if (options.copy_affine)
                {
                    gn.weight.copy_(bn.weight);
                    if (bn.bias is not null) gn.bias.copy_(bn.bias);
                }
            }
            // A frozen BatchNorm (fine-tuning a backbone) stays frozen.
            gn.weight.requires_grad = bn.weight.requires_grad;
            if (bn.bias is not null) gn.bias.requires_grad = bn.bias.requires_grad;
        }
        gn.train(bn.training);
        return gn;
    }

    private static void Replace(torch.nn.Module parent, string name, BatchNorm old, GroupNorm replacement)
    {
        var fieldUpdates = FindFieldUpdates(parent, old, replacement);

        if (RegistryField.GetValue(parent) is IDictionary<string, torch.nn.Module> registry
            && registry.TryGetValue(name, out var registered)
            && ReferenceEquals(registered, old))
        {
            // The indexer of TorchSharp's OrderedDict keeps the entry's position, so state_dict order is unchanged.
            registry[name] = replacement;
        }

        foreach (var update in fieldUpdates) update();
    }

    // Collects every store first and applies none until all are known to be possible, so a failure leaves the parent untouched.
    private static List<Action> FindFieldUpdates(torch.nn.Module parent, BatchNorm old, GroupNorm replacement)
    {
        var updates = new List<Action>();
        for (var type = parent.GetType(); type is not null && type != typeof(torch.nn.Module); type = type.BaseType)
        {
            foreach (var field in type.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
            {
                var value = field.GetValue(parent);
                if (value is null) continue;

                if (ReferenceEquals(value, old))
                {
                    if (!field.FieldType.IsAssignableFrom(typeof(GroupNorm)))
                        throw new InvalidOperationException(
                            $"{type.Name}.{field.Name} is typed {field.FieldType.Name} and cannot hold a GroupNorm; declare it as Module<Tensor, Tensor> to let the converter replace it.");
                    updates.Add(() => field.SetValue(parent, replacement));
                }
                else if (value is IList list && !list.IsReadOnly && !list.IsFixedSize)
                {
                    AddListUpdates(type, field, list, old, replacement, updates);
                }
                else if (value is IDictionary dictionary && !dictionary.IsReadOnly)
                {
                    AddDictionaryUpdates(type, field, dictionary, old, replacement, updates);
                }
            }
        }
        return updates;
    }

    private static void AddListUpdates(Type owner, FieldInfo field, IList list, BatchNorm old, GroupNorm replacement, List<Action> updates)
    {
        var elementType = ListElementType(list.GetType());
        for (var i = 0; i < list.Count; i++)
        {
            var item = list[i];
            var index = i;
            if (ReferenceEquals(item, old))
            {
                if (elementType is not null && !elementType.IsAssignableFrom(typeof(GroupNorm)))
                    throw new InvalidOperationException($"{owner.Name}.{field.Name} holds {elementType.Name} items and cannot hold a GroupNorm.");
                updates.Add(() => list[index] = replacement);
            }
            else if (item is ITuple { Length: 2 } pair && ReferenceEquals(pair[1], old))
            {
                // ModuleDict keeps (name, module) pairs beside its dictionary.
                var pairType = item.GetType();
                var moduleType = pairType.GetGenericArguments()[1];
                if (!moduleType.IsAssignableFrom(typeof(GroupNorm)))
                    throw new InvalidOperationException($"{owner.Name}.{field.Name} holds {moduleType.Name} items and cannot hold a GroupNorm.");
                var rebuilt = Activator.CreateInstance(pairType, pair[0], replacement);
                updates.Add(() => list[index] = rebuilt);
            }
        }
    }

    private static void AddDictionaryUpdates(Type owner, FieldInfo field, IDictionary dictionary, BatchNorm old, GroupNorm replacement, List<Action> updates)
    {
        var valueType = dictionary.GetType().IsGenericType ? dictionary.GetType().GetGenericArguments().ElementAtOrDefault(1) : null;
        foreach (var key in dictionary.Keys.Cast<object>().ToList())
        {
            if (!ReferenceEquals(dictionary[key], old)) continue;
            if (valueType is not null && !valueType.IsAssignableFrom(typeof(GroupNorm)))
                throw new InvalidOperationException($"{owner.Name}.{field.Name} holds {valueType.Name} values and cannot hold a GroupNorm.");
            updates.Add(() => dictionary[key] = replacement);
        }
    }

    private static Type? ListElementType(Type listType) =>
        listType.GetInterfaces()
            .Where(i => i.IsGenericType && i.GetGenericTypeDefinition() == typeof(IList<>))
            .Select(i => i.GetGenericArguments()[0])
            .FirstOrDefault();
}
