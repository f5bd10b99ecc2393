using System.Collections.Generic;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using GroupNormalization.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Benchmarks;

/// <summary>
/// Ours against TorchSharp's built-in group_norm (libtorch's native kernel) in the same run, with our
/// device-generic path and a plain copy of the input as the memory-bandwidth yardstick.
/// Forward runs without autograd; forward+backward asks autograd for dx, dweight and dbias.
/// </summary>
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory, BenchmarkLogicalGroupRule.ByParams)]
[CategoriesColumn]
#pragma warning disable CA1001 // BenchmarkDotNet disposes through [GlobalCleanup], not IDisposable.
public class GroupNormBenchmarks
#pragma warning restore CA1001
{
    public const string Forward = "Forward";
    public const string ForwardBackward = "ForwardBackward";

    private Inputs _in = null!;

    [ParamsSource(nameof(Cases))]
    public BenchCase Case { get; set; } = BenchCase.Standard[0];

    [Params(ScalarType.Float32, ScalarType.Float64)]
    public ScalarType DType { get; set; }

    [Params(Layout.Nchw, Layout.ChannelsLast)]
    public Layout Layout { get; set; }

    public static IEnumerable<BenchCase> Cases => Program.Cases(BenchCase.Standard);

    [GlobalSetup]
    public void Setup() => _in = new Inputs(Case, DType, Layout);

    [GlobalCleanup]
    public void Cleanup() => _in.Dispose();

    [Benchmark(Baseline = true), BenchmarkCategory(Forward)]
    public void BuiltinForward()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        torch.nn.functional.group_norm(_in.X, Case.G, _in.Weight, _in.Bias);
    }

    [Benchmark, BenchmarkCategory(Forward)]
    public void OursForward()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        Functional.group_norm(_in.X, Case.G, _in.Weight, _in.Bias);
    }

    [Benchmark, BenchmarkCategory(Forward)]
    public void GenericForward()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        using var generic = KernelOverride.Force(kernel: KernelKind.DeviceGeneric);
        Functional.group_norm(_in.X, Case.G, _in.Weight, _in.Bias);
    }

    /// <summary>Reads and writes as many bytes as a forward must: the bandwidth floor.</summary>
    [Benchmark, BenchmarkCategory(Forward)]
    public void Copy()
    {
        using var scope = torch.NewDisposeScope();
        _in.X.clone();
    }

    [Benchmark(Baseline = true), BenchmarkCategory(ForwardBackward)]
    public void BuiltinForwardBackward()
    {
        using var scope = torch.NewDisposeScope();
        var y = torch.nn.functional.group_norm(_in.XGrad, Case.G, _in.Weight, _in.Bias);
        Gradients(y);
    }

    [Benchmark, BenchmarkCategory(ForwardBackward)]
    public void OursForwardBackward()
    {
        using var scope = torch.NewDisposeScope();
        var y = Functional.group_norm(_in.XGrad, Case.G, _in.Weight, _in.Bias);
        Gradients(y);
    }

    [Benchmark, BenchmarkCategory(ForwardBackward)]
    public void GenericForwardBackward()
    {
        using var scope = torch.NewDisposeScope();
        using var generic = KernelOverride.Force(kernel: KernelKind.DeviceGeneric);
        var y = Functional.group_norm(_in.XGrad, Case.G, _in.Weight, _in.Bias);
        Gradients(y);
    }

    // autograd.grad returns fresh gradients instead of accumulating into .grad, so every iteration
    // does the same work and nothing grows between iterations.
    private void Gradients(Tensor y) =>
        torch.autograd.grad(new[] { y }, new[] { _in.XGrad, _in.Weight, _in.Bias }, new[] { _in.Dy });
}
