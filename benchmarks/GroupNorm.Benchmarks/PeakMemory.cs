using System;
using System.Globalization;
using System.IO;
using System.Linq;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Benchmarks;

/// <summary>
/// Peak resident memory of one forward+backward, ours against the built-in, on the benchmark shapes:
/// the rise of the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) above its RSS before
/// the call. Linux with glibc only.
/// <para>
/// That rise is the call's peak need only if freed blocks go straight back to the OS. glibc's defaults
/// keep them (its mmap threshold grows to the size of the blocks freed, and the heap is trimmed late),
/// which made most rows read 0 MiB. So this mode first pins the mmap threshold at 64 KiB and the trim
/// threshold at 0 through mallopt: every tensor-sized block is then mapped on allocation and unmapped
/// on free, for both sides alike.
/// </para>
/// </summary>
internal static class PeakMemory
{
    public static int Run(bool quick, TextWriter console)
    {
        if (!File.Exists("/proc/self/clear_refs"))
        {
            console.WriteLine("Peak-memory mode needs Linux's /proc/self/clear_refs.");
            return 1;
        }
        if (!GlibcAllocator.ReturnFreedMemoryAtOnce())
        {
            console.WriteLine("Peak-memory mode needs glibc's mallopt, which this process could not call.");
            return 1;
        }
        var cases = quick ? BenchCase.Quick : BenchCase.Standard;
        console.WriteLine("| shape/G | layout | input MiB | built-in peak MiB | ours peak MiB | ratio |");
        console.WriteLine("|---|---|---:|---:|---:|---:|");
        bool allWithin = true;
        foreach (var c in cases)
        {
            foreach (var layout in new[] { Layout.Nchw, Layout.ChannelsLast })
            {
                using var inputs = new Inputs(c, ScalarType.Float32, layout);
                // Interleave and repeat so neither side benefits from the other's freed pages.
                double builtin = double.MaxValue, ours = double.MaxValue;
                for (int round = 0; round < 3; round++)
                {
                    builtin = Math.Min(builtin, Measure(() => Step(inputs, builtIn: true)));
                    ours = Math.Min(ours, Measure(() => Step(inputs, builtIn: false)));
                }
                double inputMiB = c.Numel * 4 / 1048576.0;
                allWithin &= ours <= builtin * 1.05 + 1;
                console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {c} | {(layout == Layout.Nchw ? "NCHW" : "NHWC")} | {inputMiB:0.0} | {builtin:0.0} | {ours:0.0} | {ours / builtin:0.00}× |"));
            }
        }
        allWithin &= Network(quick, console);
        console.WriteLine(allWithin ? "Ours never needs more than the built-in (within 5% + 1 MiB)." : "Ours needs more than the built-in on some shape.");
        console.WriteLine("Ours is measured from an empty recycling cache (Memory.empty_cache()), so the output blocks it keeps count in its peak.");
        return 0;
    }

    /// <summary>
    /// Peak memory of a training step's forward+backward through six blocks of
    /// Conv2d → GroupNorm → ReLU: where a layer's memory shows whether its gradients are freed as soon as
    /// the layer below has used them, which one layer alone cannot show.
    /// </summary>
    private static bool Network(bool quick, TextWriter console)
    {
        const int NetworkBlocks = 6;
        console.WriteLine();
        console.WriteLine($"| network: {NetworkBlocks} × (conv 3×3 → GroupNorm → ReLU) | layout | activation MiB | built-in peak MiB | ours peak MiB | ratio |");
        console.WriteLine("|---|---|---:|---:|---:|---:|");
        bool allWithin = true;
        foreach (var c in quick ? NetworkCase.Quick : NetworkCase.Standard.Take(3))
        {
            foreach (var layout in new[] { Layout.Nchw, Layout.ChannelsLast })
            {
                torch.manual_seed(42);
                var convs = Enumerable.Range(0, NetworkBlocks).Select(_ => torch.nn.Conv2d(c.C, c.C, 3, padding: 1, bias: false)).ToArray();
                using var x = Inputs.InLayout(torch.randn(c.Shape), layout);
                var weights = Enumerable.Range(0, NetworkBlocks).Select(_ => torch.ones(c.C).requires_grad_()).ToArray();
                var biases = Enumerable.Range(0, NetworkBlocks).Select(_ => torch.zeros(c.C).requires_grad_()).ToArray();
                var parameters = convs.Select(m => m.weight!).Concat(weights).Concat(biases).ToArray();
                void Step(bool builtIn)
                {
                    using var scope = torch.NewDisposeScope();
                    var h = x;
                    for (int i = 0; i < NetworkBlocks; i++)
                    {
                        var conv = convs[i].forward(h);
                        h = torch.nn.functional.relu(builtIn
                            ? torch.nn.functional.group_norm(conv, c.G, weights[i], biases[i])
                            : Functional.group_norm(conv, c.G, weights[i], biases[i]));
                    }
                    torch.autograd.grad(new[] { h.sum() }, parameters);
                }
                double builtin = double.MaxValue, ours = double.MaxValue;
                for (int round = 0; round < 3; round++)
                {
                    builtin = Math.Min(builtin, Measure(() => Step(builtIn: true)));
                    ours = Math.Min(ours, Measure(() => Step(builtIn: false)));
                }
                double activationMiB = c.N * c.C * c.H * c.W * 4 / 1048576.0;
                allWithin &= ours <= builtin * 1.05 + 1;
                console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {c.N}x{c.C}x{c.H}x{c.W}/G{c.G} | {(layout == Layout.Nchw ? "NCHW" : "NHWC")} | {activationMiB:0.0} | {builtin:0.0} | {ours:0.0} | {ours / builtin:0.00}× |"));
                foreach (var m in convs) m.Dispose();
                foreach (var t in weights.Concat(biases)) t.Dispose();
            }
        }
        return allWithin;
    }

    private static void Step(Inputs inputs, bool builtIn)
    {
        using var scope = torch.NewDisposeScope();
        var y = builtIn
            ? torch.nn.functional.group_norm(inputs.XGrad, inputs.Case.G, inputs.Weight, inputs.Bias)
            : Functional.group_norm(inputs.XGrad, inputs.Case.G, inputs.Weight, inputs.Bias);
        torch.autograd.grad(new[] { y }, new[] { inputs.XGrad, inputs.Weight, inputs.Bias }, new[] { inputs.Dy });
    }

    /// <summary>
    /// Peak RSS rise in MiB while <paramref name="action"/> runs. Our recycled output blocks (see
    /// <see cref="Memory"/>) are emptied first: blocks a step maps and keeps then count in its peak, as they
    /// would in a process's first step, instead of hiding in the resident memory measured before.
    /// </summary>
    private static double Measure(Action action)
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        Memory.empty_cache();
        File.WriteAllText("/proc/self/clear_refs", "5");
        long before = ReadStatusKiB("VmRSS");
        action();
        long peak = ReadStatusKiB("VmHWM");
        return Math.Max(0, peak - before) / 1024.0;
    }

    private static long ReadStatusKiB(string field)
    {
        var line = File.ReadLines("/proc/self/status").First(l => l.StartsWith(field + ":", StringComparison.Ordinal));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
    }
}
