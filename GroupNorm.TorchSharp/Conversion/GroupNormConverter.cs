using System;
using TorchSharp;

namespace GroupNormalization.Conversion;

/// <summary>
/// Replaces every TorchSharp <c>nn.GroupNorm</c> (<see cref="TorchSharp.Modules.GroupNorm"/>) in a module tree
/// with our <see cref="GroupNorm"/>: same groups, eps, weight and bias (values and <c>requires_grad</c>), device,
/// dtype and training mode, at the same name and position, so state_dict keys and checkpoints do not change.
/// <para>
/// Every place a parent holds the layer is updated: its registry, the C# fields its <c>forward</c> reads, the
/// items of <c>Sequential</c>, <c>ModuleList</c> and <c>ModuleDict</c>, and lists and dictionaries kept in fields.
/// A layer held in several places becomes one replacement shared by all of them. A layer is swapped everywhere
/// or nowhere: every place is checked before anything is stored.
/// </para>
/// <para>
/// Left as they were, and listed in <see cref="ConversionReport.NotSwapped"/> with the reason and the source
/// change that allows the swap: a layer without affine parameters (TorchSharp's GroupNorm does not keep its
/// channel count, so ours cannot be built), and a layer some place of which is declared with a type that cannot
/// hold ours, such as a field typed <c>TorchSharp.Modules.GroupNorm</c>, a <c>List&lt;TorchSharp.Modules.GroupNorm&gt;</c>
/// or a <c>ModuleList&lt;TorchSharp.Modules.GroupNorm&gt;</c>.
/// </para>
/// <para>
/// With <see cref="GroupNormConversionOptions.fuse_activations"/>, a GroupNorm (TorchSharp's or ours) followed
/// directly by a SiLU, ReLU or exact GELU module in a plain <c>Sequential</c> becomes one GroupNorm with that
/// activation, as <see cref="BatchNormConverter"/> does. Each norm → activation pair of modules that is not fused
/// is listed in <see cref="ConversionReport.NotFused"/> with the reason; a block whose <c>forward</c> calls its
/// norm and activation fields (a VAE's ResnetBlock: <c>norm1</c>, <c>norm2</c>, <c>nonlinearity</c>) is fused by
/// hand: build the norm with <c>activation: Activation.SiLU</c> and delete the SiLU call after it (keeping the call
/// applies SiLU twice). An activation called as a function in <c>forward</c> (<c>functional.silu(x)</c>,
/// <c>x.silu()</c>) is not a module, so no converter sees it.
/// </para>
/// <para>Build the optimizer after converting: it must see the new parameters.</para>
/// </summary>
public static class GroupNormConverter
{
    /// <summary>Replaces TorchSharp's GroupNorm layers under <paramref name="model"/> (not the model itself) with ours.</summary>
    /// <param name="model">Root of the module tree; changed in place.</param>
    /// <param name="options">Whether to fold activations and dispose the replaced modules; null for the defaults.</param>
    /// <returns>What was swapped, fused, not fused and not swapped, with reasons.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="model"/> is itself a GroupNorm (TorchSharp's or ours): wrap it in a container first.</exception>
    /// <exception cref="NotSupportedException">
    /// A layer inside a <c>Sequential</c> must be replaced and this TorchSharp lacks the internal that allows it
    /// (the message names it); nothing in the model changed.
    /// </exception>
    public static ConversionReport Convert(torch.nn.Module model, GroupNormConversionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (model is TorchSharp.Modules.GroupNorm or GroupNorm)
        {
            throw new ArgumentException(
                $"The model is itself a {Replacements.KindOf(model)}; a module cannot replace itself, so wrap it (e.g. in a Sequential) first.", nameof(model));
        }
        var result = ConversionEngine.Run(model, new Rule(options ?? new GroupNormConversionOptions()));
        return new ConversionReport(result.Layers, result.NotFused, result.NotSwapped);
    }

    private sealed class Rule(GroupNormConversionOptions options) : ConversionRule
    {
        public override bool FuseActivations => options.fuse_activations;

        public override bool DisposeReplaced => options.dispose_replaced;

        public override bool ThrowsWhenBlocked => false;

        public override bool IsTarget(torch.nn.Module module) => module is TorchSharp.Modules.GroupNorm;

        public override Replacements.Built Create(torch.nn.Module target, Activation activation) =>
            Replacements.FromTheirs((TorchSharp.Modules.GroupNorm)target, activation);
    }
}
