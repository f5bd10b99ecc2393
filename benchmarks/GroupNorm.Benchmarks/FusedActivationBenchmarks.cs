using System.Collections.Generic;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Benchmarks;

/// <summary>
/// act(GroupNorm(x)) fused in our one call against the built-in group_norm followed by the built-in silu or relu,
/// float32 NCHW, affine. The built-in pair runs out-of-place as nn.SiLU() and nn.ReLU() do by default, and both
/// sides leave their outputs to the dispose scope: the pair's intermediate tensor (written, read back, and kept
/// for the activation's backward when the graph is recorded) is what fusion removes. "Unfused" is our GroupNorm
/// followed by the built-in activation: the gap between it and the fused call is the fusion's own share.
/// </summary>
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory, BenchmarkLogicalGroupRule.ByParams)]
[CategoriesColumn]
#pragma warning disable CA1001 // BenchmarkDotNet disposes through [GlobalCleanup], not IDisposable.
public class FusedActivationBenchmarks
#pragma warning restore CA1001
{
    public const string Forward = "ActForward";
    public const string ForwardGraph = "ActForwardGraph";
    public const string ForwardBackward = "ActForwardBackward";

    private Inputs _in = null!;

    [ParamsSource(nameof(Cases))]
    public BenchCase Case { get; set; } = BenchCase.Activation[0];

    [Params(Activation.SiLU, Activation.ReLU, Activation.GELU)]
    public Activation Activation { get; set; }

    public static IEnumerable<BenchCase> Cases => Program.Cases(BenchCase.Activation);

    [GlobalSetup]
    public void Setup() => _in = new Inputs(Case, ScalarType.Float32, Layout.Nchw);

    [GlobalCleanup]
    public void Cleanup() => _in.Dispose();

    private Tensor Act(Tensor z) => Program.BuiltinActivation(z, Activation);

    private Tensor Builtin(Tensor x) => Act(torch.nn.functional.group_norm(x, Case.G, _in.Weight, _in.Bias));

    private Tensor Fused(Tensor x) => Functional.group_norm(x, Case.G, _in.Weight, _in.Bias, activation: Activation);

    private Tensor Unfused(Tensor x) => Act(Functional.group_norm(x, Case.G, _in.Weight, _in.Bias));

    [Benchmark(Baseline = true), BenchmarkCategory(Forward)]
    public void BuiltinActForward()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        Builtin(_in.X);
    }

    [Benchmark, BenchmarkCategory(Forward)]
    public void OursActForward()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        Fused(_in.X);
    }

    [Benchmark, BenchmarkCategory(Forward)]
    public void UnfusedActForward()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        Unfused(_in.X);
    }

    [Benchmark(Baseline = true), BenchmarkCategory(ForwardGraph)]
    public void BuiltinActForwardGraph()
    {
        using var scope = torch.NewDisposeScope();
        Builtin(_in.XGrad);
    }

    [Benchmark, BenchmarkCategory(ForwardGraph)]
    public void OursActForwardGraph()
    {
        using var scope = torch.NewDisposeScope();
        Fused(_in.XGrad);
    }

    [Benchmark, BenchmarkCategory(ForwardGraph)]
    public void UnfusedActForwardGraph()
    {
        using var scope = torch.NewDisposeScope();
        Unfused(_in.XGrad);
    }

    [Benchmark(Baseline = true), BenchmarkCategory(ForwardBackward)]
    public void BuiltinActForwardBackward()
    {
        using var scope = torch.NewDisposeScope();
        Gradients(Builtin(_in.XGrad));
    }

    [Benchmark, BenchmarkCategory(ForwardBackward)]
    public void OursActForwardBackward()
    {
        using var scope = torch.NewDisposeScope();
        Gradients(Fused(_in.XGrad));
    }

    [Benchmark, BenchmarkCategory(ForwardBackward)]
    public void UnfusedActForwardBackward()
    {
        using var scope = torch.NewDisposeScope();
        Gradients(Unfused(_in.XGrad));
    }

    // Fresh gradients each call instead of accumulating into .grad: every iteration does the same work.
    private void Gradients(Tensor y) =>
        torch.autograd.grad(new[] { y }, new[] { _in.XGrad, _in.Weight, _in.Bias }, new[] { _in.Dy });
}
