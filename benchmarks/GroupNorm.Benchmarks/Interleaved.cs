using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using GroupNormalization.Kernels.Threading;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Benchmarks;

/// <summary>
/// Ours against the built-in in alternating blocks of calls, round after round, with the ratio taken per
/// round and its median reported.
/// <para>
/// Why besides BenchmarkDotNet: on a shared virtual machine the speed of the whole machine drifts by 2× and
/// more within minutes (the same call measured 29 µs and 142 µs a minute apart here), and BenchmarkDotNet
/// measures one method to the end before it starts the next, so a drift lands on one side of a ratio.
/// Here both sides run within milliseconds of each other in every round, so drift cancels in the ratio.
/// </para>
/// </summary>
internal static partial class Interleaved
{
    private const double BlockMilliseconds = 3;

    /// <summary>Groups of the fixed-cost case (1, 32, 1, 1), the same as <see cref="OverheadBenchmarks.Groups"/>.</summary>
    private const long Groups = OverheadBenchmarks.Groups;

    /// <summary>
    /// Runs one suite: default (isolation, in-network, fixed cost), activation, half, residual or diffusion; 2 for an
    /// unknown suite, 1 when the diffusion suite's sides disagree. <paramref name="rounds"/> null: the suite's default
    /// (2 with --quick).
    /// </summary>
    public static int Run(string suite, int? rounds, TextWriter console)
    {
        if (suite is not ("default" or "activation" or "half" or "residual" or "diffusion"))
        {
            console.WriteLine($"Unknown suite '{suite}': default, activation, half, residual or diffusion.");
            return 2;
        }
        var elapsed = Stopwatch.StartNew();
        int result = Run(suite, rounds ?? (Program.Quick ? 2 : suite == "diffusion" ? DiffusionRounds : 15), console);
        console.WriteLine($"Elapsed: {(int)elapsed.Elapsed.TotalMinutes} min {elapsed.Elapsed.Seconds} s.");
        return result;
    }

    private static int Run(string suite, int rounds, TextWriter console)
    {
        console.WriteLine($"Interleaved comparison ({suite}), {rounds} rounds of alternating blocks (≥ {BlockMilliseconds} ms each); threads: {ParallelFor.Description}, libtorch threads {torch.get_num_threads()}.");
        console.WriteLine();
        switch (suite)
        {
            case "activation":
                FusedActivation(rounds, console);
                break;
            case "half":
                Isolation(rounds, console, new[] { ScalarType.Float16, ScalarType.BFloat16 }, new[] { Layout.Nchw }, Program.Cases(BenchCase.Half), perDType: true);
                break;
            case "residual":
                Residual(rounds, console);
                break;
            case "diffusion":
                return Diffusion(rounds, console);
            default:
                Isolation(rounds, console, new[] { ScalarType.Float32, ScalarType.Float64 }, new[] { Layout.Nchw, Layout.ChannelsLast },
                    Program.Cases(BenchCase.Standard.Concat(BenchCase.ResNet20)), perDType: false);
                Network(Program.Quick, rounds, console);
                Overhead(rounds, console);
                break;
        }
        return 0;
    }

    private static void Isolation(int rounds, TextWriter console, ScalarType[] dtypes, Layout[] layouts, IEnumerable<BenchCase> cases, bool perDType)
    {
        console.WriteLine("| shape/G | dtype | layout | built-in fwd µs | ours fwd µs | ratio | built-in fwd+bwd µs | ours fwd+bwd µs | ratio |");
        console.WriteLine("|---|---|---|---:|---:|---:|---:|---:|---:|");
        var fwd = new List<double>();
        var fb = new List<double>();
        var perDTypeLines = new List<string>();
        var shapes = cases.ToList();
        foreach (var dtype in dtypes)
        {
            int first = fwd.Count;
            foreach (var layout in layouts)
            {
                foreach (var c in shapes)
                {
                    using var inputs = new Inputs(c, dtype, layout);
                    var f = Compare(rounds,
                        () => { using var s = torch.NewDisposeScope(); using var g = torch.no_grad(); torch.nn.functional.group_norm(inputs.X, c.G, inputs.Weight, inputs.Bias); },
                        () => { using var s = torch.NewDisposeScope(); using var g = torch.no_grad(); Functional.group_norm(inputs.X, c.G, inputs.Weight, inputs.Bias); });
                    var b = Compare(rounds,
                        () => { using var s = torch.NewDisposeScope(); Gradients(torch.nn.functional.group_norm(inputs.XGrad, c.G, inputs.Weight, inputs.Bias), inputs); },
                        () => { using var s = torch.NewDisposeScope(); Gradients(Functional.group_norm(inputs.XGrad, c.G, inputs.Weight, inputs.Bias), inputs); });
                    fwd.Add(f.Ratio);
                    fb.Add(b.Ratio);
                    console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"| {c} | {Name(dtype)} | {Name(layout)} | {f.Builtin:0.0} | {f.Ours:0.0} | {f.Ratio:0.00}× | {b.Builtin:0.0} | {b.Ours:0.0} | {b.Ratio:0.00}× |"));
                }
            }
            if (perDType && fwd.Count > first) perDTypeLines.Add(string.Create(CultureInfo.InvariantCulture,
                $"{Name(dtype)}: median forward {Median(fwd.GetRange(first, fwd.Count - first)):0.00}×, forward+backward {Median(fb.GetRange(first, fb.Count - first)):0.00}×."));
        }
        console.WriteLine();
        if (fwd.Count == 0)
        {
            console.WriteLine("No shape left after --shape/--max-numel.");
            console.WriteLine();
            return;
        }
        console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"Median ratio to the built-in: forward {Median(fwd):0.00}×, forward+backward {Median(fb):0.00}×; worst: forward {fwd.Max():0.00}×, forward+backward {fb.Max():0.00}× ({fwd.Count} configurations)."));
        foreach (var line in perDTypeLines) console.WriteLine(line);
        console.WriteLine();
    }

    /// <summary>
    /// act(GroupNorm(x)) in one fused call against the built-in group_norm then the built-in activation, as a
    /// diffusion UNet or a ResNet writes it (out-of-place, both outputs in the scope: the intermediate tensor is
    /// the unfused pair's real cost), with ours unfused (our group_norm then the built-in activation) as a third
    /// side that separates what the fusion buys from what the GroupNorm kernel does.
    /// </summary>
    private static void FusedActivation(int rounds, TextWriter console)
    {
        console.WriteLine("| shape/G | act | pass | built-in GN, act µs | ours fused µs | ratio | ours GN, built-in act µs | ratio |");
        console.WriteLine("|---|---|---|---:|---:|---:|---:|---:|");
        var ratios = new Dictionary<(Activation, string), List<double>>();
        foreach (var c in Program.Cases(BenchCase.Activation))
        {
            using var inputs = new Inputs(c, ScalarType.Float32, Layout.Nchw);
            foreach (var act in Program.Activations)
            {
                Tensor Act(Tensor z) => Program.BuiltinActivation(z, act);
                Tensor Builtin(Tensor x) => Act(torch.nn.functional.group_norm(x, c.G, inputs.Weight, inputs.Bias));
                Tensor Fused(Tensor x) => Functional.group_norm(x, c.G, inputs.Weight, inputs.Bias, activation: act);
                Tensor Unfused(Tensor x) => Act(Functional.group_norm(x, c.G, inputs.Weight, inputs.Bias));
                foreach (var (pass, run) in new (string, Action<Func<Tensor, Tensor>>)[]
                {
                    ("fwd", f => { using var s = torch.NewDisposeScope(); using var g = torch.no_grad(); f(inputs.X); }),
                    // The unfused pair keeps the GroupNorm output alive for the activation's backward; ours does not.
                    ("fwd graph", f => { using var s = torch.NewDisposeScope(); f(inputs.XGrad); }),
                    ("fwd+bwd", f => { using var s = torch.NewDisposeScope(); Gradients(f(inputs.XGrad), inputs); }),
                })
                {
                    var r = CompareSides(rounds, () => run(Builtin), () => run(Fused), () => run(Unfused));
                    if (!ratios.TryGetValue((act, pass), out var list)) ratios[(act, pass)] = list = new List<double>();
                    list.Add(r.Ratios[1]);
                    console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"| {c} | {act} | {pass} | {r.Medians[0]:0.0} | {r.Medians[1]:0.0} | {r.Ratios[1]:0.00}× | {r.Medians[2]:0.0} | {r.Ratios[2]:0.00}× |"));
                }
            }
        }
        console.WriteLine();
        if (ratios.Count == 0) console.WriteLine("No shape left after --shape/--max-numel.");
        foreach (var ((act, pass), list) in ratios)
        {
            console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"GN+{act} {pass}, fused over the built-in pair: median {Median(list):0.00}×, worst {list.Max():0.00}× ({list.Count} shapes)."));
        }
        console.WriteLine();
    }

    /// <summary>
    /// act(GroupNorm(x) + r) with ReLU, a ResNet block's norm2 → add → ReLU, fused in one call, against the
    /// built-in group_norm then add_ and relu_ in place (as the sample's unfused block writes it), with ours
    /// unfused (our group_norm, then the same add_ and relu_) as a third side. Backward asks for x's, γ's, β's
    /// and r's gradients. Minor page faults per call follow each side's time.
    /// </summary>
    private static void Residual(int rounds, TextWriter console)
    {
        console.WriteLine("| shape/G | layout | pass | built-in GN, add_, relu_ µs | ours fused µs | ratio | ours GN, add_, relu_ µs | ratio | faults/call built-in, fused, unfused |");
        console.WriteLine("|---|---|---|---:|---:|---:|---:|---:|---|");
        var ratios = new Dictionary<(Layout, string), List<double>>();
        foreach (var c in Program.Cases(BenchCase.Residual))
        {
            foreach (var layout in new[] { Layout.Nchw, Layout.ChannelsLast })
            {
                using var inputs = new Inputs(c, ScalarType.Float32, layout);
                torch.manual_seed(43);
                using var r = Inputs.InLayout(torch.randn(c.Shape), layout);
                using var rGrad = r.detach().requires_grad_();
                var wrt = new[] { inputs.XGrad, inputs.Weight, inputs.Bias, rGrad };
                Tensor Builtin(Tensor x, Tensor res) => torch.nn.functional.group_norm(x, c.G, inputs.Weight, inputs.Bias).add_(res).relu_();
                Tensor Fused(Tensor x, Tensor res) => Functional.group_norm(x, c.G, inputs.Weight, inputs.Bias, activation: Activation.ReLU, residual: res);
                Tensor Unfused(Tensor x, Tensor res) => Functional.group_norm(x, c.G, inputs.Weight, inputs.Bias).add_(res).relu_();
                foreach (var (pass, run) in new (string, Action<Func<Tensor, Tensor, Tensor>>)[]
                {
                    ("fwd", f => { using var s = torch.NewDisposeScope(); using var g = torch.no_grad(); f(inputs.X, r); }),
                    ("fwd graph", f => { using var s = torch.NewDisposeScope(); f(inputs.XGrad, rGrad); }),
                    ("fwd+bwd", f => { using var s = torch.NewDisposeScope(); torch.autograd.grad(new[] { f(inputs.XGrad, rGrad) }, wrt, new[] { inputs.Dy }); }),
                })
                {
                    var sides = new Action[] { () => run(Builtin), () => run(Fused), () => run(Unfused) };
                    var t = CompareSides(rounds, sides);
                    int calls = CallsPerBlock(sides[0]);
                    var faults = sides.Select(side => FaultsPerCall(side, calls)).ToArray();
                    if (!ratios.TryGetValue((layout, pass), out var list)) ratios[(layout, pass)] = list = new List<double>();
                    list.Add(t.Ratios[1]);
                    console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"| {c} | {Name(layout)} | {pass} | {t.Medians[0]:0.0} | {t.Medians[1]:0.0} | {t.Ratios[1]:0.00}× | {t.Medians[2]:0.0} | {t.Ratios[2]:0.00}× | {string.Join(", ", faults.Select(f => f.ToString("0", CultureInfo.InvariantCulture)))} |"));
                }
            }
        }
        console.WriteLine();
        if (ratios.Count == 0) console.WriteLine("No shape left after --shape/--max-numel.");
        foreach (var pass in new[] { "fwd", "fwd graph", "fwd+bwd" })
        {
            var all = ratios.Where(e => e.Key.Item2 == pass).SelectMany(e => e.Value).ToList();
            if (all.Count == 0) continue;
            var perLayout = ratios.Where(e => e.Key.Item2 == pass).Select(e => string.Create(CultureInfo.InvariantCulture, $"{Name(e.Key.Item1)} median {Median(e.Value):0.00}×, worst {e.Value.Max():0.00}×"));
            console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"GN+add+ReLU {pass}, fused over the built-in's three ops: median {Median(all):0.00}×, worst {all.Max():0.00}× ({all.Count} rows; {string.Join("; ", perLayout)})."));
        }
        console.WriteLine();
    }

    private static void Network(bool quick, int rounds, TextWriter console)
    {
        console.WriteLine("| block | layout | pass | conv only µs | built-in block µs | ours block µs | ratio | ours fused block µs | ratio | built-in GN+ReLU µs | ours GN+ReLU µs | ratio | ours fused GN+ReLU µs | ratio | faults/call built-in, ours, fused |");
        console.WriteLine("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        var ratios = new List<double>();
        var fusedRatios = new List<double>();
        var partForward = new List<double>();
        var fusedPartForward = new List<double>();
        foreach (var layout in new[] { Layout.Nchw, Layout.ChannelsLast })
        {
            foreach (var c in quick ? NetworkCase.Quick : NetworkCase.Standard)
            {
                torch.manual_seed(42);
                using var conv = nn.Conv2d(c.C, c.C, c.Kernel, padding: c.Kernel / 2, bias: false);
                using var x = Inputs.InLayout(torch.randn(c.Shape), layout);
                using var dy = Inputs.InLayout(torch.randn(c.Shape), layout);
                using var w = (torch.rand(c.C) + 0.5).requires_grad_();
                using var bias = torch.randn(c.C).requires_grad_();
                var parameters = new[] { conv.weight!, w, bias };
                Tensor Builtin(Tensor h) => torch.nn.functional.relu(torch.nn.functional.group_norm(h, c.G, w, bias));
                Tensor Ours(Tensor h) => torch.nn.functional.relu(Functional.group_norm(h, c.G, w, bias));
                Tensor OursFused(Tensor h) => Functional.group_norm(h, c.G, w, bias, activation: Activation.ReLU);
                void Forward(Func<Tensor, Tensor> norm)
                {
                    using var s = torch.NewDisposeScope();
                    using var g = torch.no_grad();
                    norm(conv.forward(x));
                }
                void ForwardBackward(Func<Tensor, Tensor> norm)
                {
                    using var s = torch.NewDisposeScope();
                    torch.autograd.grad(new[] { norm(conv.forward(x)) }, parameters, new[] { dy });
                }
                void ConvBackward()
                {
                    using var s = torch.NewDisposeScope();
                    torch.autograd.grad(new[] { conv.forward(x) }, new[] { conv.weight! }, new[] { dy });
                }
                foreach (var (pass, builtin, ours, fused, floor) in new (string, Action, Action, Action, Action)[]
                {
                    ("fwd", () => Forward(Builtin), () => Forward(Ours), () => Forward(OursFused), () => Forward(h => h)),
                    ("fwd+bwd", () => ForwardBackward(Builtin), () => ForwardBackward(Ours), () => ForwardBackward(OursFused), ConvBackward),
                })
                {
                    // The floor takes its turn with the others, so that drift lands on it alike.
                    var t = CompareSides(rounds, builtin, ours, fused, floor);
                    double b = t.Medians[0], o = t.Medians[1], f = t.Medians[2], fl = t.Medians[3];
                    int calls = CallsPerBlock(builtin);
                    var faults = new[] { builtin, ours, fused }.Select(side => FaultsPerCall(side, calls)).ToArray();
                    ratios.Add(t.Ratios[1]);
                    fusedRatios.Add(t.Ratios[2]);
                    if (pass == "fwd")
                    {
                        partForward.Add((o - fl) / (b - fl));
                        fusedPartForward.Add((f - fl) / (b - fl));
                    }
                    console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"| {c} | {Name(layout)} | {pass} | {fl:0} | {b:0} | {o:0} | {t.Ratios[1]:0.00}× | {f:0} | {t.Ratios[2]:0.00}× | {b - fl:0} | {o - fl:0} | {(o - fl) / (b - fl):0.00}× | {f - fl:0} | {(f - fl) / (b - fl):0.00}× | {string.Join(", ", faults.Select(x => x.ToString("0", CultureInfo.InvariantCulture)))} |"));
                }
            }
        }
        console.WriteLine();
        console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"Block time over the built-in's: ours median {Median(ratios):0.00}×, worst {ratios.Max():0.00}×; ours fused median {Median(fusedRatios):0.00}×, worst {fusedRatios.Max():0.00}× ({ratios.Count} rows)."));
        console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"GroupNorm+ReLU after the convolution, forward (block minus conv): ours worst {partForward.Max():0.00}×, median {Median(partForward):0.00}×; ours fused worst {fusedPartForward.Max():0.00}×, median {Median(fusedPartForward):0.00}×."));
        console.WriteLine();
    }

    private static void Overhead(int rounds, TextWriter console)
    {
        using var x = torch.randn(1, 32, 1, 1);
        using var xg = x.detach().requires_grad_();
        using var dy = torch.randn(1, 32, 1, 1);
        using var w = torch.ones(32).requires_grad_();
        using var b = torch.zeros(32).requires_grad_();
        console.WriteLine("| fixed cost on (1, 32, 1, 1)/G16 | built-in µs | ours µs | ratio |");
        console.WriteLine("|---|---:|---:|---:|");
        foreach (var (name, builtin, ours) in new (string, Action, Action)[]
        {
            ("forward without grad",
                () => { using var s = torch.NewDisposeScope(); using var g = torch.no_grad(); torch.nn.functional.group_norm(x, Groups, w, b); },
                () => { using var s = torch.NewDisposeScope(); using var g = torch.no_grad(); Functional.group_norm(x, Groups, w, b); }),
            ("forward recording the graph",
                () => { using var s = torch.NewDisposeScope(); torch.nn.functional.group_norm(xg, Groups, w, b); },
                () => { using var s = torch.NewDisposeScope(); Functional.group_norm(xg, Groups, w, b); }),
            ("forward+backward",
                () => { using var s = torch.NewDisposeScope(); torch.autograd.grad(new[] { torch.nn.functional.group_norm(xg, Groups, w, b) }, new[] { xg, w, b }, new[] { dy }); },
                () => { using var s = torch.NewDisposeScope(); torch.autograd.grad(new[] { Functional.group_norm(xg, Groups, w, b) }, new[] { xg, w, b }, new[] { dy }); }),
        })
        {
            var r = Compare(rounds * 2, builtin, ours);
            console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {name} | {r.Builtin:0.0} | {r.Ours:0.0} | {r.Ratio:0.00}× |"));
        }
        console.WriteLine();
    }

    private static void Gradients(Tensor y, Inputs inputs) =>
        torch.autograd.grad(new[] { y }, new[] { inputs.XGrad, inputs.Weight, inputs.Bias }, new[] { inputs.Dy });

    private readonly record struct Comparison(double Builtin, double Ours, double Ratio);

    /// <summary>Median µs per call of each side and the median of the per-round ratios: <see cref="CompareSides(int, Action[])"/> for two.</summary>
    private static Comparison Compare(int rounds, Action builtin, Action ours)
    {
        var t = CompareSides(rounds, builtin, ours);
        return new Comparison(t.Medians[0], t.Medians[1], t.Ratios[1]);
    }

    /// <summary>Each side's median µs per call, its median per-round ratio to the first side, and the calls per block.</summary>
    private sealed record SideComparison(double[] Medians, double[] Ratios, int Calls);

    /// <summary>
    /// Any number of sides in alternating blocks after a warm-up (JIT, libtorch's kernel caches, the allocator's
    /// free lists): the median µs per call of each, and the median of each side's per-round ratio to the first.
    /// Every side gets its turn at every position, in both directions, so that none always runs on the heap and
    /// caches one particular other side left. Calls of tens of milliseconds need fewer than the default 3 warm-ups.
    /// </summary>
    private static SideComparison CompareSides(int rounds, params Action[] sides) => CompareSides(rounds, 3, sides);

    private static SideComparison CompareSides(int rounds, int warmups, params Action[] sides)
    {
        for (int i = 0; i < warmups; i++)
        {
            foreach (var side in sides) side();
        }
        int calls = CallsPerBlock(sides[0]);
        int n = sides.Length;
        var times = Enumerable.Range(0, n).Select(_ => new List<double>()).ToArray();
        var ratios = Enumerable.Range(0, n).Select(_ => new List<double>()).ToArray();
        var t = new double[n];
        for (int round = 0; round < rounds; round++)
        {
            bool backwards = round / n % 2 == 1;
            for (int k = 0; k < n; k++)
            {
                int side = (round + (backwards ? n - k : k)) % n;
                t[side] = Block(sides[side], calls);
            }
            for (int side = 0; side < n; side++)
            {
                times[side].Add(t[side]);
                ratios[side].Add(t[side] / t[0]);
            }
        }
        return new SideComparison(times.Select(Median).ToArray(), ratios.Select(Median).ToArray(), calls);
    }

    /// <summary>Minor page faults per call of <paramref name="action"/> over <paramref name="calls"/> calls, or NaN where not measurable.</summary>
    private static double FaultsPerCall(Action action, int calls)
    {
        long? before = ResNetCifar.Throughput.PageFaults.MinorFaults();
        for (int i = 0; i < calls; i++) action();
        long? after = ResNetCifar.Throughput.PageFaults.MinorFaults();
        return before is long b && after is long a ? (double)(a - b) / calls : double.NaN;
    }

    private static int CallsPerBlock(Action action)
    {
        var clock = Stopwatch.StartNew();
        action();
        double ms = Math.Max(clock.Elapsed.TotalMilliseconds, 1e-3);
        return (int)Math.Clamp(BlockMilliseconds / ms, 1, 2000);
    }

    private static double Block(Action action, int calls)
    {
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < calls; i++) action();
        return clock.Elapsed.TotalMilliseconds * 1000 / calls;
    }

    private static double Median(List<double> values)
    {
        var sorted = values.OrderBy(v => v).ToList();
        int n = sorted.Count;
        return n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
    }

    private static string Name(ScalarType dtype) => dtype switch
    {
        ScalarType.Float64 => "f64",
        ScalarType.Float16 => "f16",
        ScalarType.BFloat16 => "bf16",
        _ => "f32",
    };

    private static string Name(Layout layout) => layout == Layout.Nchw ? "NCHW" : "NHWC";
}
