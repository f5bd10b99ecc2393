using System.Collections.Generic;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using GroupNormalization.Kernels;
using GroupNormalization.Kernels.Threading;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace GroupNormalization.Benchmarks;

/// <summary>One in-network case: Conv2d (C → C, k × k, same padding) on (N, C, H, W), then GroupNorm(G), then ReLU.</summary>
public sealed record NetworkCase(long N, long C, long H, long W, long G, long Kernel)
{
    public long[] Shape => new[] { N, C, H, W };

    /// <summary>
    /// ResNet-20's three stages at batch 32 with the sample's 8 groups (3×3 convolutions, as in the network),
    /// and a ResNet-50-sized (8, 256, 56, 56)/32 after a 1×1 convolution (a bottleneck's), where a 3×3 one
    /// would take 100× the GroupNorm's time and hide it.
    /// </summary>
    public static IReadOnlyList<NetworkCase> Standard { get; } = new[]
    {
        new NetworkCase(32, 16, 32, 32, 8, 3),
        new NetworkCase(32, 32, 16, 16, 8, 3),
        new NetworkCase(32, 64, 8, 8, 8, 3),
        new NetworkCase(8, 256, 56, 56, 32, 1),
    };

    public static IReadOnlyList<NetworkCase> Quick { get; } = new[] { new NetworkCase(2, 16, 8, 8, 8, 3) };

    public override string ToString() => $"{N}x{C}x{H}x{W}/G{G} conv{Kernel}x{Kernel}";
}

/// <summary>
/// GroupNorm where users feel it: right after a convolution, whose OpenMP threads are still spinning and
/// whose output was just allocated, followed by a ReLU. Ours (on libtorch's OpenMP team, and forced onto
/// our own worker threads) against the built-in group_norm, with the convolution alone as the floor that
/// both share. Forward runs without autograd; forward+backward asks for the convolution's and the norm's
/// parameter gradients, as a training step does.
/// </summary>
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory, BenchmarkLogicalGroupRule.ByParams)]
[CategoriesColumn]
#pragma warning disable CA1001 // BenchmarkDotNet disposes through [GlobalCleanup], not IDisposable.
public class NetworkBenchmarks
#pragma warning restore CA1001
{
    public const string Forward = "NetForward";
    public const string ForwardBackward = "NetForwardBackward";

    private Conv2d _conv = null!;
    private Tensor _x = null!, _dy = null!, _weight = null!, _bias = null!;
    private Tensor[] _parameters = null!;

    [ParamsSource(nameof(Cases))]
    public NetworkCase Case { get; set; } = NetworkCase.Standard[0];

    [Params(Layout.Nchw, Layout.ChannelsLast)]
    public Layout Layout { get; set; }

    public static IEnumerable<NetworkCase> Cases => Program.Quick ? NetworkCase.Quick : NetworkCase.Standard;

    [GlobalSetup]
    public void Setup()
    {
        torch.manual_seed(42);
        _conv = nn.Conv2d(Case.C, Case.C, Case.Kernel, padding: Case.Kernel / 2, bias: false);
        _x = Inputs.InLayout(torch.randn(Case.Shape), Layout);
        _dy = Inputs.InLayout(torch.randn(Case.Shape), Layout);
        _weight = (torch.rand(Case.C) + 0.5).requires_grad_();
        _bias = torch.randn(Case.C).requires_grad_();
        _parameters = new[] { _conv.weight!, _weight, _bias };
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _conv.Dispose();
        foreach (var t in new[] { _x, _dy, _weight, _bias }) t.Dispose();
    }

    private Tensor Builtin(Tensor h) => torch.nn.functional.relu(torch.nn.functional.group_norm(h, Case.G, _weight, _bias));

    private Tensor Ours(Tensor h) => torch.nn.functional.relu(Functional.group_norm(h, Case.G, _weight, _bias));

    [Benchmark(Baseline = true), BenchmarkCategory(Forward)]
    public void BuiltinNetForward()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        Builtin(_conv.forward(_x));
    }

    [Benchmark, BenchmarkCategory(Forward)]
    public void OursNetForward()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        Ours(_conv.forward(_x));
    }

    [Benchmark, BenchmarkCategory(Forward)]
    public void OursOwnThreadsNetForward()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        using var own = KernelOverride.Force(backend: ParallelBackend.KernelThreads);
        Ours(_conv.forward(_x));
    }

    /// <summary>The convolution alone: the part of the block's time that GroupNorm cannot change.</summary>
    [Benchmark, BenchmarkCategory(Forward)]
    public void ConvOnlyNetForward()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        _conv.forward(_x);
    }

    [Benchmark(Baseline = true), BenchmarkCategory(ForwardBackward)]
    public void BuiltinNetForwardBackward()
    {
        using var scope = torch.NewDisposeScope();
        Gradients(Builtin(_conv.forward(_x)));
    }

    [Benchmark, BenchmarkCategory(ForwardBackward)]
    public void OursNetForwardBackward()
    {
        using var scope = torch.NewDisposeScope();
        Gradients(Ours(_conv.forward(_x)));
    }

    [Benchmark, BenchmarkCategory(ForwardBackward)]
    public void OursOwnThreadsNetForwardBackward()
    {
        using var scope = torch.NewDisposeScope();
        using var own = KernelOverride.Force(backend: ParallelBackend.KernelThreads);
        Gradients(Ours(_conv.forward(_x)));
    }

    [Benchmark, BenchmarkCategory(ForwardBackward)]
    public void ConvOnlyNetForwardBackward()
    {
        using var scope = torch.NewDisposeScope();
        var h = _conv.forward(_x);
        torch.autograd.grad(new[] { h }, new[] { _conv.weight! }, new[] { _dy });
    }

    private void Gradients(Tensor y) => torch.autograd.grad(new[] { y }, _parameters, new[] { _dy });
}
