using System.Collections.Generic;
using System.Linq;
using System.Text;

namespace GroupNormalization.Conversion;

/// <summary>
/// What a converter (<see cref="GroupNormConverter"/>, <see cref="BatchNormConverter"/>) swapped, fused, saw but
/// did not fuse, and left as it was. <see cref="ToString"/> lists all four.
/// <para>
/// Only modules are visible to a converter: an activation called as a function inside a <c>forward</c>
/// (<c>functional.silu(x)</c>, <c>x.silu()</c>) is not in the module tree, so it is neither fused nor listed here.
/// </para>
/// </summary>
public class ConversionReport
{
    internal ConversionReport(IReadOnlyList<ConvertedLayer> layers, IReadOnlyList<NotFusedPair> notFused, IReadOnlyList<NotSwappedLayer> notSwapped)
    {
        Layers = layers;
        Folded = layers.Where(l => l.activation != Activation.None).ToList();
        NotFused = notFused;
        NotSwapped = notSwapped;
    }

    /// <summary>Every replaced layer, in the order the module tree was walked.</summary>
    public IReadOnlyList<ConvertedLayer> Layers { get; }

    /// <summary>
    /// How many modules were replaced (a module shared by several parents counts once): the converted layers,
    /// and the GroupNorm layers that absorbed an activation.
    /// </summary>
    public int Count => Layers.Count;

    /// <summary>The layers that absorbed the activation after them (the options' <c>fuse_activations</c>).</summary>
    public IReadOnlyList<ConvertedLayer> Folded { get; }

    /// <summary>
    /// Each norm → activation pair of modules that was seen but not fused, with the reason: <c>fuse_activations</c>
    /// off, a norm held in more than one place, an activation without a fused kernel (LeakyReLU, Mish, GELU with
    /// approximate=tanh, ...), a norm that already applies an activation, a TorchSharp GroupNorm without affine
    /// parameters, or a parent whose <c>forward</c> decides the order (any module but a plain <c>Sequential</c>:
    /// every norm child is paired with every activation child there).
    /// </summary>
    public IReadOnlyList<NotFusedPair> NotFused { get; }

    /// <summary>The layers left as they were, with the reason and the source change that would let them be swapped.</summary>
    public IReadOnlyList<NotSwappedLayer> NotSwapped { get; }

    /// <summary>A summary, one line per layer or pair: what was swapped, fused, not fused and not swapped.</summary>
    public override string ToString()
    {
        var text = new StringBuilder();
        text.Append($"Swapped {Plural(Count, "layer")} ({Folded.Count} with an activation fused), {NotFused.Count} not fused, ")
            .AppendLine($"{NotSwapped.Count} not swapped.");
        if (Layers.Count > 0)
        {
            text.AppendLine("Swapped:");
            foreach (var l in Layers)
            {
                text.Append($"  {l.name} ({l.kind}, {Plural(l.num_channels, "channel")}, {Plural(l.num_groups, "group")})");
                text.AppendLine(l.activation == Activation.None ? "" : $" + {l.activation} fused from {l.activation_name} (now an Identity)");
            }
        }
        if (NotFused.Count > 0)
        {
            text.AppendLine("Not fused:");
            foreach (var p in NotFused) text.AppendLine($"  {p.name} ({p.kind}) → {p.activation_name} ({p.activation_kind}): {p.reason}");
        }
        if (NotSwapped.Count > 0)
        {
            text.AppendLine("Not swapped:");
            foreach (var n in NotSwapped) text.AppendLine($"  {n.name} ({n.kind}): {n.reason}. To allow it: {n.source_change}.");
        }
        text.Append("Activations called as functions in a forward (functional.silu(x), x.silu()) are not modules: no converter sees them.");
        return text.ToString();
    }

    private static string Plural(long n, string noun) => n == 1 ? $"1 {noun}" : $"{n} {noun}s";
}
