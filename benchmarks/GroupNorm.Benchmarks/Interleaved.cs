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
internal static class Interleaved
{
    private const double BlockMilliseconds = 3;

    public static int Run(bool quick, TextWriter console)
    {
        int rounds = quick ? 2 : 15;
        console.WriteLine($"Interleaved comparison, {rounds} rounds of alternating blocks (≥ {BlockMilliseconds} ms each); threads: {ParallelFor.Description}, libtorch threads {torch.get_num_threads()}.");
        console.WriteLine();
        Isolation(quick, rounds, console);
        Network(quick, rounds, console);
        Overhead(rounds, console);
        return 0;
    }

    private static void Isolation(bool quick, int rounds, TextWriter console)
    {
        console.WriteLine("| shape/G | dtype | layout | built-in fwd µs | ours fwd µs | ratio | built-in fwd+bwd µs | ours fwd+bwd µs | ratio |");
        console.WriteLine("|---|---|---|---:|---:|---:|---:|---:|---:|");
        var fwd = new List<double>();
        var fb = new List<double>();
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.Float64 })
        {
            foreach (var layout in new[] { Layout.Nchw, Layout.ChannelsLast })
            {
                foreach (var c in quick ? BenchCase.Quick : BenchCase.Standard.Concat(BenchCase.ResNet20))
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
        }
        console.WriteLine();
        console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"Median ratio to the built-in: forward {Median(fwd):0.00}×, forward+backward {Median(fb):0.00}×; worst: forward {fwd.Max():0.00}×, forward+backward {fb.Max():0.00}× ({fwd.Count} configurations)."));
        console.WriteLine();
    }

    private static void Network(bool quick, int rounds, TextWriter console)
    {
        console.WriteLine("| block | layout | pass | conv only µs | built-in block µs | ours block µs | ratio | built-in GN+ReLU µs | ours GN+ReLU µs | ratio |");
        console.WriteLine("|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
        var ratios = new List<double>();
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
                foreach (var (pass, builtin, ours, floor) in new (string, Action, Action, Action)[]
                {
                    ("fwd", () => Forward(Builtin), () => Forward(Ours), () => Forward(h => h)),
                    ("fwd+bwd", () => ForwardBackward(Builtin), () => ForwardBackward(Ours), ConvBackward),
                })
                {
                    var r = Compare(rounds, builtin, ours, floor);
                    ratios.Add(r.Ratio);
                    console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"| {c} | {Name(layout)} | {pass} | {r.Floor:0} | {r.Builtin:0} | {r.Ours:0} | {r.Ratio:0.00}× | {r.Builtin - r.Floor:0} | {r.Ours - r.Floor:0} | {(r.Ours - r.Floor) / (r.Builtin - r.Floor):0.00}× |"));
                }
            }
        }
        console.WriteLine();
        console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"Block time, ours over the built-in's: median {Median(ratios):0.00}×, worst {ratios.Max():0.00}× ({ratios.Count} rows)."));
        console.WriteLine();
    }

    private static void Overhead(int rounds, TextWriter console)
    {
        using var x = torch.randn(1, 32, 1, 1);
        using var xg = x.detach().requires_grad_();
        using var dy = torch.randn(1, 32, 1, 1);
        using var w = torch.ones(32).requires_grad_();
        using var b = torch.zeros(32).requires_grad_();
        console.WriteLine("| fixed cost on (1, 32, 1, 1) | built-in µs | ours µs | ratio |");
        console.WriteLine("|---|---:|---:|---:|");
        foreach (var (name, builtin, ours) in new (string, Action, Action)[]
        {
            ("forward without grad",
                () => { using var s = torch.NewDisposeScope(); using var g = torch.no_grad(); torch.nn.functional.group_norm(x, 32, w, b); },
                () => { using var s = torch.NewDisposeScope(); using var g = torch.no_grad(); Functional.group_norm(x, 32, w, b); }),
            ("forward recording the graph",
                () => { using var s = torch.NewDisposeScope(); torch.nn.functional.group_norm(xg, 32, w, b); },
                () => { using var s = torch.NewDisposeScope(); Functional.group_norm(xg, 32, w, b); }),
            ("forward+backward",
                () => { using var s = torch.NewDisposeScope(); torch.autograd.grad(new[] { torch.nn.functional.group_norm(xg, 32, w, b) }, new[] { xg, w, b }, new[] { dy }); },
                () => { using var s = torch.NewDisposeScope(); torch.autograd.grad(new[] { Functional.group_norm(xg, 32, w, b) }, new[] { xg, w, b }, new[] { dy }); }),
        })
        {
            var r = Compare(rounds * 2, builtin, ours);
            console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {name} | {r.Builtin:0.0} | {r.Ours:0.0} | {r.Ratio:0.00}× |"));
        }
        console.WriteLine();
    }

    private static void Gradients(Tensor y, Inputs inputs) =>
        torch.autograd.grad(new[] { y }, new[] { inputs.XGrad, inputs.Weight, inputs.Bias }, new[] { inputs.Dy });

    private readonly record struct Comparison(double Builtin, double Ours, double Ratio, double Floor);

    /// <summary>Median µs per call of each side (and of an optional floor), and the median of the per-round ratios.</summary>
    private static Comparison Compare(int rounds, Action builtin, Action ours, Action? floor = null)
    {
        // Warm-up: JIT, libtorch's kernel caches, the allocator's free lists.
        for (int i = 0; i < 3; i++)
        {
            builtin();
            ours();
            floor?.Invoke();
        }
        int calls = CallsPerBlock(builtin);
        var b = new List<double>();
        var o = new List<double>();
        var f = new List<double>();
        var ratios = new List<double>();
        for (int round = 0; round < rounds; round++)
        {
            // Who goes first alternates, so that neither side always inherits the other's heap state.
            double tb, to;
            if (round % 2 == 0)
            {
                tb = Block(builtin, calls);
                to = Block(ours, calls);
            }
            else
            {
                to = Block(ours, calls);
                tb = Block(builtin, calls);
            }
            b.Add(tb);
            o.Add(to);
            ratios.Add(to / tb);
            if (floor is not null) f.Add(Block(floor, calls));
        }
        return new Comparison(Median(b), Median(o), Median(ratios), f.Count > 0 ? Median(f) : double.NaN);
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

    private static string Name(ScalarType dtype) => dtype == ScalarType.Float64 ? "f64" : "f32";

    private static string Name(Layout layout) => layout == Layout.Nchw ? "NCHW" : "NHWC";
}
