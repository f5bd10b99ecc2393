using System;
using System.Linq;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace GroupNormalization.Conversion;

/// <summary>Building our GroupNorm from another norm layer, and the names the reports give types.</summary>
internal static class Replacements
{
    /// <summary>A new layer, or the reason there is none and the source change that would allow one.</summary>
    internal readonly record struct Built(GroupNorm? Module, string Reason = "", string SourceChange = "");

    /// <summary>How the reports name our GroupNorm, in full so that it is not taken for TorchSharp's.</summary>
    internal const string OursName = "GroupNormalization.GroupNorm";

    /// <summary>How the reports name TorchSharp's GroupNorm.</summary>
    internal static readonly string TheirsName = typeof(TorchSharp.Modules.GroupNorm).FullName!;

    /// <summary>The kind a report gives a layer: TorchSharp's GroupNorm in full, every other type by its name.</summary>
    internal static string KindOf(nn.Module module) => module is TorchSharp.Modules.GroupNorm ? TheirsName : module.GetType().Name;

    /// <summary>
    /// Our GroupNorm in place of TorchSharp's: its groups, eps, weight and bias (values and requires_grad), device,
    /// dtype and training mode. None when it has no weight: TorchSharp's module does not keep its channel count.
    /// </summary>
    internal static Built FromTheirs(TorchSharp.Modules.GroupNorm theirs, Activation activation)
    {
        Parameter? weight = theirs.weight;
        if (weight is null)
        {
            return new Built(null,
                "it has no weight (built with affine: false), and TorchSharp's GroupNorm does not keep its channel count, so a replacement's num_channels is unknown",
                $"build it in source as our GroupNorm with its channel count C: `gn.GroupNorm({theirs.num_groups}, C, affine: false)` or `new GroupNorm({theirs.num_groups}, C, affine: false)`");
        }
        return Create(theirs.num_groups, weight.shape[0], theirs.eps, weight, theirs.bias, theirs.training, activation);
    }

    /// <summary>A copy of our <paramref name="ours"/> with <paramref name="activation"/> fused.</summary>
    internal static Built FromOurs(GroupNorm ours, Activation activation)
    {
        if (ours.weight is null && ours.bias is not null)
            return new Built(null, "it has a bias but no weight, which a GroupNorm built with an activation cannot take over", "give it a weight, or remove its bias");
        return Create(ours.num_groups, ours.num_channels, ours.eps, ours.weight, ours.bias, ours.training, activation);
    }

    private static Built Create(long numGroups, long numChannels, double eps, Parameter? weight, Parameter? bias, bool training, Activation activation)
    {
        GroupNorm gn;
        try
        {
            gn = new GroupNorm(numGroups, numChannels, eps, weight is not null, weight?.device, weight?.dtype, activation);
        }
        catch (ArgumentException e)
        {
            return new Built(null, $"its settings do not make a valid GroupNorm ({e.Message})", "fix the layer's settings");
        }
        CopyAffine(gn, weight, bias, copyValues: true);
        if (weight is not null && bias is null) gn.bias = null;
        gn.train(training);
        return new Built(gn);
    }

    /// <summary>Copies <paramref name="weight"/> and <paramref name="bias"/> into <paramref name="gn"/> (values when asked, requires_grad always).</summary>
    internal static void CopyAffine(GroupNorm gn, Parameter? weight, Parameter? bias, bool copyValues)
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

    /// <summary>
    /// A type as C# source spells it (<c>List&lt;Module&lt;Tensor, Tensor&gt;&gt;</c>, the two GroupNorms in full), with
    /// <paramref name="narrow"/>, when given, spelled <paramref name="wide"/> wherever it appears (itself or a type argument).
    /// </summary>
    internal static string SourceName(Type type, Type? narrow = null, string? wide = null)
    {
        if (type == narrow) return wide!;
        if (type == typeof(TorchSharp.Modules.GroupNorm)) return TheirsName;
        if (type == typeof(GroupNorm)) return OursName;
        if (type == typeof(string)) return "string";
        if (type == typeof(object)) return "object";
        if (type == typeof(int)) return "int";
        if (type == typeof(long)) return "long";
        if (!type.IsGenericType) return type.Name;
        var name = type.Name;
        int tick = name.IndexOf('`', StringComparison.Ordinal);
        if (tick >= 0) name = name[..tick];
        return $"{name}<{string.Join(", ", type.GetGenericArguments().Select(a => SourceName(a, narrow, wide)))}>";
    }
}
