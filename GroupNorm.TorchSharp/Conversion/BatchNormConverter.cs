using System;
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
/// With <see cref="BatchNormConversionOptions.fuse_activations"/>, a normalization layer followed directly by
/// a SiLU, ReLU or exact GELU module (in-place or not) in the same <c>Sequential</c> becomes one GroupNorm computing
/// act(GroupNorm(x)): a BatchNorm being converted, one of our GroupNorm layers without an activation, or
/// TorchSharp's <c>nn.GroupNorm</c> with weight and bias (without them its channel count is unknown). The
/// new layer keeps the old one's groups, eps, affine flag, values of weight and bias, their
/// <c>requires_grad</c>, device, dtype and training mode (a BatchNorm's groups, eps and affine flag follow the
/// options as without folding). The activation's slot then holds an <c>nn.Identity</c> rather than being
/// removed, so every item keeps its index and name: code that indexes the Sequential (<c>model[3]</c>) finds
/// the same layer, and state_dict keys (<c>3.weight</c>) stay as they were, so checkpoints saved before the
/// conversion load after it. Removing the slot would shift every later index, and leave a gap in the names
/// that a Sequential rebuilt from its items would close by renumbering its keys. The Identity has no
/// parameters and passes the tensor through at the cost of one alias. Not folded, and listed in
/// <see cref="ConversionReport.NotFused"/> with the reason: a layer that sits in more than one place of the tree
/// (its other places would lose the sharing of weights), an activation without a fused kernel (LeakyReLU,
/// GELU with approximate=tanh, ...), a Sequential subclass with its own <c>forward</c> (its items need not run
/// in order), and norm and activation children of any other parent (its <c>forward</c> decides the order).
/// Forward hooks registered on the norm layer or the activation are not carried over.
/// </para>
/// <para>
/// Limits: a BatchNorm kept in a C# field typed as BatchNorm (rather than <c>Module</c> or
/// <c>Module&lt;Tensor, Tensor&gt;</c>), or in a list or container of such items, cannot hold a GroupNorm: the
/// converter throws, naming each such field and the declaration that allows it, before anything in the model
/// changes. A BatchNorm captured in a lambda or held outside the tree is not seen. Build the optimizer after
/// converting: it must see the new parameters. The walk is shared with <see cref="GroupNormConverter"/>.
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
    /// <exception cref="InvalidOperationException">
    /// A parent keeps a BatchNorm in a field (or list, dictionary, ModuleList, ModuleDict) whose type cannot hold a
    /// GroupNorm; the message names each and the change to make. Nothing in the model changed.
    /// </exception>
    /// <exception cref="NotSupportedException">
    /// A layer inside a <c>Sequential</c> must be replaced and this TorchSharp lacks the internal that allows it
    /// (the message names it); nothing in the model changed.
    /// </exception>
    public static BatchNormConversionReport Convert(torch.nn.Module model, BatchNormConversionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (model is BatchNorm)
            throw new ArgumentException($"The model is itself a {model.GetType().Name}; a module cannot replace itself, so wrap it (e.g. in a Sequential) first.", nameof(model));
        var result = ConversionEngine.Run(model, new Rule(options ?? new BatchNormConversionOptions()));
        return new BatchNormConversionReport(result.Layers, result.NotFused);
    }

    private sealed class Rule(BatchNormConversionOptions options) : ConversionRule
    {
        public override bool FuseActivations => options.fuse_activations;

        public override bool DisposeReplaced => options.dispose_replaced;

        // A BatchNorm model written with typed fields has always been an error here; the message now names every such field.
        public override bool ThrowsWhenBlocked => true;

        public override bool IsTarget(torch.nn.Module module) => module is BatchNorm;

        public override Replacements.Built Create(torch.nn.Module target, Activation activation)
        {
            var bn = (BatchNorm)target;
            // BatchNorm without affine parameters still has running statistics; either one tells the placement.
            var reference = bn.affine ? bn.weight : bn.running_mean;
            var affine = options.affine ?? bn.affine;
            var gn = new GroupNorm(options.choose_num_groups(bn.num_features), bn.num_features, options.eps ?? bn.eps, affine,
                reference?.device, reference?.dtype, activation);
            if (bn.affine) Replacements.CopyAffine(gn, bn.weight, bn.bias, options.copy_affine);
            gn.train(bn.training);
            return new Replacements.Built(gn);
        }
    }
}
