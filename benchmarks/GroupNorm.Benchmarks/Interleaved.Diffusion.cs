using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Benchmarks;

internal static partial class Interleaved
{
    /// <summary>
    /// The diffusion suite's rounds when --rounds is not given: with the three norm sides, 13 rounds of the six
    /// shapes in three modes took 5 min 35 s on this project's 2-core machine (each shape's agreement check,
    /// warm-up, block sizing and fault count included); the no-norm floor adds about a third.
    /// </summary>
    public const int DiffusionRounds = 13;

    /// <summary>
    /// One way of running the block: its dtype, whether backward runs, issue #20's target for the fused side's
    /// median ratio, and how far the sides may disagree (largest difference over largest magnitude).
    /// </summary>
    private sealed record DiffusionMode(string Name, ScalarType DType, bool Backward, double FusedTarget, double Tolerance);

    private static readonly DiffusionMode[] DiffusionModes =
    {
        new("f32 fwd", ScalarType.Float32, false, 0.85, 1e-4),
        new("bf16 fwd", ScalarType.BFloat16, false, 0.70, 5e-2),
        new("f32 fwd+bwd", ScalarType.Float32, true, 0.85, 1e-4),
    };

    /// <summary>Our plain GroupNorm's target: no slower than the built-in on any shape.</summary>
    private const double PlainTarget = 1.0;

    /// <summary>
    /// Stable Diffusion's residual block (<see cref="DiffusionBlock"/>) with the built-in group_norm then silu,
    /// ours plain (our group_norm then silu) and ours fused (GN+SiLU in one call) as its norms: forward without
    /// grad in float32 and in bfloat16, and forward+backward in float32 with the input's and every weight's
    /// gradient, as a training step asks. Before a shape is timed, its three sides' outputs (and gradients)
    /// are compared; a disagreement stops the suite with exit code 1.
    /// </summary>
    private static int Diffusion(int rounds, TextWriter console)
    {
        console.WriteLine($"Stable Diffusion's residual block: h = Conv3×3(SiLU(GN(x))); h = Conv3×3(SiLU(GN(h))); out = x + h ({DiffusionBlock.Groups} groups, eps {DiffusionBlock.Eps.ToString("0e0", CultureInfo.InvariantCulture)}, convolution biases, no time embedding).");
        console.WriteLine("Sides: the built-in group_norm then silu; ours plain (our group_norm then silu); ours fused (GroupNorm + SiLU in one call). All three share the weights and inputs.");
        console.WriteLine("Floor: the same block without norms and SiLUs (convolutions and skip only), timed in the same rounds: its ratio is the lowest any norm could reach here.");
        console.WriteLine("Ratios: ours over the built-in, medians of per-round ratios. Agreement: largest |ours − built-in| over largest |built-in|, of the output and, with backward, of every gradient; checked before timing.");
        console.WriteLine();
        var cases = Program.Cases(BenchCase.Diffusion, BenchCase.DiffusionQuick).ToList();
        var summaries = new List<string>();
        foreach (var mode in DiffusionModes)
        {
            console.WriteLine($"#### {mode.Name}");
            console.WriteLine();
            console.WriteLine("| shape | built-in ms | ours plain ms | ours fused ms | floor ms | plain ratio | fused ratio | floor ratio | faults/call built-in, plain, fused | agreement plain, fused |");
            console.WriteLine("|---|---:|---:|---:|---:|---:|---:|---:|---|---|");
            var plainRatios = new List<double>();
            var fusedRatios = new List<double>();
            var floorRatios = new List<double>();
            foreach (var c in cases)
            {
                using var inputs = new Inputs(c, mode.DType, Layout.Nchw);
                using var block = new DiffusionBlock(c.C, mode.DType);
                var wrt = new[] { inputs.XGrad }.Concat(block.Parameters).ToArray();
                var norms = new[] { DiffusionNorm.Builtin, DiffusionNorm.OursPlain, DiffusionNorm.OursFused };

                var agreement = Agreement(block, inputs, wrt, mode.Backward, norms);
                if (agreement.Any(d => !(d <= mode.Tolerance)))
                {
                    console.WriteLine();
                    console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"{c} {mode.Name}: the sides disagree (ours plain {agreement[0]:0.0e0}, ours fused {agreement[1]:0.0e0} of the built-in's largest magnitude; tolerance {mode.Tolerance:0.0e0}). Stopped: the timings would compare different computations."));
                    return 1;
                }

                var floorWrt = new[] { inputs.XGrad }.Concat(block.ConvolutionParameters).ToArray();
                var sides = norms.Append(DiffusionNorm.Floor).Select(norm => mode.Backward
                    ? (Action)(() => { using var s = torch.NewDisposeScope(); torch.autograd.grad(new[] { block.Forward(inputs.XGrad, norm) }, norm == DiffusionNorm.Floor ? floorWrt : wrt, new[] { inputs.Dy }); })
                    : () => { using var s = torch.NewDisposeScope(); using var g = torch.no_grad(); block.Forward(inputs.X, norm); }).ToArray();
                // The agreement check ran each norm once; calls of milliseconds need one more warm-up, not three.
                var t = CompareSides(rounds, 1, sides);
                var faults = sides.Take(norms.Length).Select(side => FaultsPerCall(side, t.Calls)).ToArray();
                plainRatios.Add(t.Ratios[1]);
                fusedRatios.Add(t.Ratios[2]);
                floorRatios.Add(t.Ratios[3]);
                console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {c.N}x{c.C}x{c.H}x{c.W} | {t.Medians[0] / 1000:0.00} | {t.Medians[1] / 1000:0.00} | {t.Medians[2] / 1000:0.00} | {t.Medians[3] / 1000:0.00} | {t.Ratios[1]:0.00}× | {t.Ratios[2]:0.00}× | {t.Ratios[3]:0.00}× | {string.Join(", ", faults.Select(f => f.ToString("0", CultureInfo.InvariantCulture)))} | {agreement[0]:0.0e0}, {agreement[1]:0.0e0} |"));
            }
            console.WriteLine();
            if (plainRatios.Count == 0)
            {
                console.WriteLine("No shape left after --shape/--max-numel.");
                console.WriteLine();
                return 0;
            }
            string summary = string.Create(CultureInfo.InvariantCulture,
                $"{mode.Name}: ours fused median {Median(fusedRatios):0.00}× (target ≤ {mode.FusedTarget:0.00}×: {Verdict(Median(fusedRatios) <= mode.FusedTarget)}), max {fusedRatios.Max():0.00}×; ours plain median {Median(plainRatios):0.00}×, max {plainRatios.Max():0.00}× (target ≤ {PlainTarget:0.00}× on every shape: {Verdict(plainRatios.Max() <= PlainTarget)}); no-norm floor median {Median(floorRatios):0.00}×, min {floorRatios.Min():0.00}× ({plainRatios.Count} shape{(plainRatios.Count == 1 ? "" : "s")}).");
            summaries.Add(summary);
            console.WriteLine(summary);
            console.WriteLine();
        }
        console.WriteLine("Against issue #20's targets (ours over the built-in, medians over the shapes of the per-round medians):");
        foreach (var summary in summaries) console.WriteLine($"- {summary}");
        console.WriteLine();
        return 0;
    }

    private static string Verdict(bool met) => met ? "met" : "missed";

    /// <summary>
    /// Runs the block once with each norm and returns how far ours plain and ours fused are from the built-in
    /// (<see cref="DiffusionBlock.RelativeDifference"/>): the output, and with <paramref name="backward"/> the
    /// gradients of <paramref name="wrt"/> too.
    /// </summary>
    private static double[] Agreement(DiffusionBlock block, Inputs inputs, Tensor[] wrt, bool backward, DiffusionNorm[] norms)
    {
        using var scope = torch.NewDisposeScope();
        Tensor[] Results(DiffusionNorm norm)
        {
            if (!backward)
            {
                using var g = torch.no_grad();
                return new[] { block.Forward(inputs.X, norm) };
            }
            var y = block.Forward(inputs.XGrad, norm);
            var grads = torch.autograd.grad(new[] { y }, wrt, new[] { inputs.Dy });
            return grads.Prepend(y.detach()).ToArray();
        }
        var results = norms.Select(Results).ToArray();
        return new[] { DiffusionBlock.RelativeDifference(results[1], results[0]), DiffusionBlock.RelativeDifference(results[2], results[0]) };
    }
}
