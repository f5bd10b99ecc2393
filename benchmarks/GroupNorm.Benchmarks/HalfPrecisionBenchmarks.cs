using System.Collections.Generic;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Benchmarks;

/// <summary>
/// float16 and bfloat16 inputs with weight and bias in the same dtype, ours against the built-in group_norm in
/// that dtype, NCHW. Forward runs without autograd; forward+backward asks for dx, dweight and dbias.
/// The VAE decoder's shape is slow in half precision: --max-numel 5000000 or --shape leaves it out.
/// </summary>
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory, BenchmarkLogicalGroupRule.ByParams)]
[CategoriesColumn]
#pragma warning disable CA1001 // BenchmarkDotNet disposes through [GlobalCleanup], not IDisposable.
public class HalfPrecisionBenchmarks
#pragma warning restore CA1001
{
    public const string Forward = "HalfForward";
    public const string ForwardBackward = "HalfForwardBackward";

    private Inputs _in = null!;

    [ParamsSource(nameof(Cases))]
    public BenchCase Case { get; set; } = BenchCase.Half[0];

    [Params(ScalarType.Float16, ScalarType.BFloat16)]
    public ScalarType DType { get; set; }

    public static IEnumerable<BenchCase> Cases => Program.Cases(BenchCase.Half);

    [GlobalSetup]
    public void Setup() => _in = new Inputs(Case, DType, Layout.Nchw);

    [GlobalCleanup]
    public void Cleanup() => _in.Dispose();

    [Benchmark(Baseline = true), BenchmarkCategory(Forward)]
    public void BuiltinHalfForward()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        torch.nn.functional.group_norm(_in.X, Case.G, _in.Weight, _in.Bias);
    }

    [Benchmark, BenchmarkCategory(Forward)]
    public void OursHalfForward()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        Functional.group_norm(_in.X, Case.G, _in.Weight, _in.Bias);
    }

    [Benchmark(Baseline = true), BenchmarkCategory(ForwardBackward)]
    public void BuiltinHalfForwardBackward()
    {
        using var scope = torch.NewDisposeScope();
        Gradients(torch.nn.functional.group_norm(_in.XGrad, Case.G, _in.Weight, _in.Bias));
    }

    [Benchmark, BenchmarkCategory(ForwardBackward)]
    public void OursHalfForwardBackward()
    {
        using var scope = torch.NewDisposeScope();
        Gradients(Functional.group_norm(_in.XGrad, Case.G, _in.Weight, _in.Bias));
    }

    private void Gradients(Tensor y) =>
        torch.autograd.grad(new[] { y }, new[] { _in.XGrad, _in.Weight, _in.Bias }, new[] { _in.Dy });
}
