using System;
using System.Collections.Generic;
using System.Linq;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

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
/// With <see cref="BatchNormConversionOptions.fuse_activations"/>, a normalization layer followed directly by
/// a SiLU or ReLU module (in-place or not) in the same <c>Sequential</c> becomes one GroupNorm computing
/// act(GroupNorm(x)): a BatchNorm being converted, one of our GroupNorm layers without an activation, or
/// TorchSharp's <c>nn.GroupNorm</c> with weight and bias (without them its channel count is unknown). The
/// new layer keeps the old one's groups, eps, affine flag, values of weight and bias, their
/// <c>requires_grad</c>, device, dtype and training mode (a BatchNorm's groups, eps and affine flag follow the
/// options as without folding). The activation's slot then holds an <c>nn.Identity</c> rather than being
/// removed, so every item keeps its index and name: code that indexes the Sequential (<c>model[3]</c>) finds
/// the same layer, and state_dict keys (<c>3.weight</c>) stay as they were, so checkpoints saved before the
/// conversion load after it. Removing the slot would shift every later index, and leave a gap in the names
/// that a Sequential rebuilt from its items would close by renumbering its keys. The Identity has no
/// parameters and passes the tensor through at the cost of one alias. Not folded: a layer that sits in more than one place of the tree (its other places
/// would lose the sharing of weights), a Sequential subclass with its own <c>forward</c> (its items need not
/// run in order), and layers in any other container. Forward hooks registered on the norm layer or the
/// activation are not carried over.
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
    /// <summary>Replaces the BatchNorm layers under <paramref name="model"/> (not the model itself) with GroupNorm.</summary>
    /// <param name="model">Root of the module tree; changed in place.</param>
    /// <param name="options">How to choose groups, eps and affine parameters, and whether to fold activations; null for the defaults.</param>
    /// <returns>The replaced layers, with the number of groups each got and the activation each absorbed.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="model"/> is itself a BatchNorm: wrap it in a container first.</exception>
    /// <exception cref="InvalidOperationException">A parent keeps a BatchNorm in a field whose type cannot hold a GroupNorm.</exception>
    /// <exception cref="NotSupportedException">
    /// A layer inside a <c>Sequential</c> must be replaced and this TorchSharp lacks the internal that allows it
    /// (the message names it); the parent is left unchanged.
    /// </exception>
    public static BatchNormConversionReport Convert(torch.nn.Module model, BatchNormConversionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (model is BatchNorm)
            throw new ArgumentException($"The model is itself a {model.GetType().Name}; a module cannot replace itself, so wrap it (e.g. in a Sequential) first.", nameof(model));
        options ??= new BatchNormConversionOptions();

        var walk = new Walk(options, options.fuse_activations ? CountPlaces(model) : null);
        walk.ConvertChildren(model, "");
        if (options.dispose_replaced) walk.DisposeReplaced(model);
        return new BatchNormConversionReport(walk.Layers);
    }

    // How many registry entries hold each module: a layer held in one place can be folded without
    // changing what any other place computes.
    private static Dictionary<torch.nn.Module, int> CountPlaces(torch.nn.Module root)
    {
        var counts = new Dictionary<torch.nn.Module, int>(ReferenceEqualityComparer.Instance);
        var visited = new HashSet<torch.nn.Module>(ReferenceEqualityComparer.Instance) { root };
        var pending = new Stack<torch.nn.Module>();
        pending.Push(root);
        while (pending.TryPop(out var parent))
        {
            foreach (var (_, child) in parent.named_children())
            {
                counts[child] = counts.GetValueOrDefault(child) + 1;
                if (visited.Add(child)) pending.Push(child);
            }
        }
        return counts;
    }

    private sealed class Walk(BatchNormConversionOptions options, Dictionary<torch.nn.Module, int>? places)
    {
        private readonly Dictionary<BatchNorm, GroupNorm> _replacements = new(ReferenceEqualityComparer.Instance);
        private readonly List<torch.nn.Module> _replaced = [];
        private readonly List<torch.nn.Module> _foldedActivations = [];
        private readonly HashSet<torch.nn.Module> _visited = new(ReferenceEqualityComparer.Instance);

        public List<ConvertedLayer> Layers { get; } = [];

        public void ConvertChildren(torch.nn.Module parent, string prefix)
        {
            if (!_visited.Add(parent)) return;

            // Snapshot: the registry is rewritten while we walk it.
            var children = parent.named_children().ToList();
            var sequential = places is null ? null : AsPlainSequential(parent);
            for (int i = 0; i < children.Count; i++)
            {
                var (name, child) = children[i];
                if (sequential is not null && i + 1 < children.Count && TryFold(sequential, prefix, i, children[i], children[i + 1]))
                {
                    i++;
                    continue;
                }

                if (child is BatchNorm bn)
                {
                    if (!_replacements.TryGetValue(bn, out var gn))
                    {
                        gn = CreateReplacement(bn, options, Activation.None);
                        _replacements.Add(bn, gn);
                        _replaced.Add(bn);
                        Layers.Add(new ConvertedLayer(prefix + name, bn.GetType().Name, bn.num_features, gn.num_groups));
                    }
                    Commit(ModuleReplacement.PlanReplacement(parent, bn, gn), gn);
                }
                else
                {
                    ConvertChildren(child, prefix + name + ".");
                }
            }
        }

        private bool TryFold(Sequential sequential, string prefix, int index,
            (string name, torch.nn.Module module) norm, (string name, torch.nn.Module module) next)
        {
            var activation = next.module switch
            {
                SiLU => Activation.SiLU,
                ReLU => Activation.ReLU,
                _ => Activation.None,
            };
            if (activation == Activation.None || places!.GetValueOrDefault(norm.module) != 1) return false;

            var (fused, kind) = norm.module switch
            {
                BatchNorm bn => (CreateReplacement(bn, options, activation), bn.GetType().Name),
                GroupNorm ours when ours.activation == Activation.None && (ours.weight is null) == (ours.bias is null) =>
                    (Refold(ours.num_groups, ours.num_channels, ours.eps, ours.weight, ours.bias, ours.training, activation), nameof(GroupNorm)),
                TorchSharp.Modules.GroupNorm theirs when theirs.weight is not null && theirs.bias is not null =>
                    (Refold(theirs.num_groups, theirs.weight.shape[0], theirs.eps, theirs.weight, theirs.bias, theirs.training, activation),
                        typeof(TorchSharp.Modules.GroupNorm).FullName!),
                _ => (null, ""),
            };
            if (fused is null) return false;

            var identity = torch.nn.Identity();
            identity.train(next.module.training);
            Action storeNorm, storeIdentity;
            try
            {
                storeNorm = ModuleReplacement.PlanReplacement(sequential, norm.module, fused);
                storeIdentity = ModuleReplacement.PlanSequentialItem(sequential, index + 1, identity);
            }
            catch
            {
                fused.Dispose();
                identity.Dispose();
                throw;
            }
            storeNorm();
            storeIdentity();

            _replaced.Add(norm.module);
            _foldedActivations.Add(next.module);
            Layers.Add(new ConvertedLayer(prefix + norm.name, kind, fused.num_channels, fused.num_groups, activation, prefix + next.name));
            return true;
        }

        private static void Commit(Action store, GroupNorm replacement)
        {
            try
            {
                store();
            }
            catch
            {
                replacement.Dispose();
                throw;
            }
        }

        public void DisposeReplaced(torch.nn.Module model)
        {
            foreach (var old in _replaced) old.Dispose();
            if (_foldedActivations.Count == 0) return;
            // An activation module may also sit in places that were not folded; those keep it alive.
            var live = new HashSet<torch.nn.Module>(model.modules(), ReferenceEqualityComparer.Instance) { model };
            foreach (var activation in _foldedActivations.Distinct(ReferenceEqualityComparer.Instance).Cast<torch.nn.Module>())
            {
                if (!live.Contains(activation)) activation.Dispose();
            }
        }
    }

    // A subclass that overrides forward decides itself how its items combine, so adjacency means nothing there.
    private static Sequential? AsPlainSequential(torch.nn.Module module) =>
        module is Sequential sequential
        && sequential.GetType().GetMethod(nameof(Sequential.forward), [typeof(Tensor)])?.DeclaringType == typeof(Sequential)
            ? sequential
            : null;

    private static GroupNorm CreateReplacement(BatchNorm bn, BatchNormConversionOptions options, Activation activation)
    {
        // BatchNorm without affine parameters still has running statistics; either one tells the placement.
        var reference = bn.affine ? bn.weight : bn.running_mean;
        var affine = options.affine ?? bn.affine;
        var gn = new GroupNorm(options.choose_num_groups(bn.num_features), bn.num_features, options.eps ?? bn.eps, affine,
            reference?.device, reference?.dtype, activation);
        if (bn.affine) CopyAffine(gn, bn.weight, bn.bias, options.copy_affine);
        gn.train(bn.training);
        return gn;
    }

    private static GroupNorm Refold(long numGroups, long numChannels, double eps, Parameter? weight, Parameter? bias, bool training, Activation activation)
    {
        var gn = new GroupNorm(numGroups, numChannels, eps, weight is not null, weight?.device, weight?.dtype, activation);
        CopyAffine(gn, weight, bias, copyValues: true);
        gn.train(training);
        return gn;
    }

    private static void CopyAffine(GroupNorm gn, Parameter? weight, Parameter? bias, bool copyValues)
    {
        if (gn.weight is null || gn.bias is null || weight is null) return;
        if (copyValues)
        {
            using (torch.no_grad())
            {
                gn.weight.copy_(weight);
                if (bias is not null) gn.bias.copy_(bias);
            }
        }
        // A frozen layer (fine-tuning a backbone) stays frozen.
        gn.weight.requires_grad = weight.requires_grad;
        if (bias is not null) gn.bias.requires_grad = bias.requires_grad;
    }
}
