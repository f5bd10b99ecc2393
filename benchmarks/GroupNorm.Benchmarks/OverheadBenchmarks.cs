using BenchmarkDotNet.Attributes;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Benchmarks;

/// <summary>
/// Fixed cost per call, on a (1, 32, 1, 1) input in 16 groups where the arithmetic is negligible: validation,
/// kernel dispatch, the autograd node, and TorchSharp's interop. Not 32 groups: a group of one value is rejected,
/// as PyTorch's F.group_norm does, and two values per group cost no more.
/// </summary>
public class OverheadBenchmarks
{
    public const long Groups = 16;

    private Tensor _x = null!, _xGrad = null!, _w = null!, _b = null!, _dy = null!;

    [GlobalSetup]
    public void Setup()
    {
        _x = torch.randn(1, 32, 1, 1);
        _xGrad = _x.detach().requires_grad_();
        _dy = torch.randn(1, 32, 1, 1);
        _w = torch.ones(32).requires_grad_();
        _b = torch.zeros(32).requires_grad_();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var t in new[] { _x, _xGrad, _dy, _w, _b }) t.Dispose();
    }

    [Benchmark]
    public void BuiltinForwardNoGrad()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        torch.nn.functional.group_norm(_x, Groups, _w, _b);
    }

    [Benchmark]
    public void OursForwardNoGrad()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        Functional.group_norm(_x, Groups, _w, _b);
    }

    [Benchmark]
    public void BuiltinForwardGraph()
    {
        using var scope = torch.NewDisposeScope();
        torch.nn.functional.group_norm(_xGrad, Groups, _w, _b);
    }

    [Benchmark]
    public void OursForwardGraph()
    {
        using var scope = torch.NewDisposeScope();
        Functional.group_norm(_xGrad, Groups, _w, _b);
    }

    [Benchmark]
    public void BuiltinForwardBackward()
    {
        using var scope = torch.NewDisposeScope();
        var y = torch.nn.functional.group_norm(_xGrad, Groups, _w, _b);
        torch.autograd.grad(new[] { y }, new[] { _xGrad, _w, _b }, new[] { _dy });
    }

    [Benchmark]
    public void OursForwardBackward()
    {
        using var scope = torch.NewDisposeScope();
        var y = Functional.group_norm(_xGrad, Groups, _w, _b);
        torch.autograd.grad(new[] { y }, new[] { _xGrad, _w, _b }, new[] { _dy });
    }
}
