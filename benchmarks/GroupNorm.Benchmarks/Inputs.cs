using System;
using GroupNormalization.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Benchmarks;

/// <summary>The tensors one benchmark case works on, built once per parameter combination.</summary>
public sealed class Inputs : IDisposable
{
    public Inputs(BenchCase c, ScalarType dtype, Layout layout)
    {
        Case = c;
        torch.manual_seed(42);
        X = InLayout(torch.randn(c.Shape, dtype: dtype), layout);
        Dy = InLayout(torch.randn(c.Shape, dtype: dtype), layout);
        XGrad = X.detach().requires_grad_();
        Weight = (torch.rand(c.C, dtype: dtype) + 0.5).requires_grad_();
        Bias = torch.randn(c.C, dtype: dtype).requires_grad_();
    }

    public BenchCase Case { get; }

    public Tensor X { get; }

    /// <summary>X as a leaf that requires grad, for forward+backward.</summary>
    public Tensor XGrad { get; }

    public Tensor Dy { get; }

    public Tensor Weight { get; }

    public Tensor Bias { get; }

    public static Tensor InLayout(Tensor t, Layout layout)
    {
        if (layout == Layout.Nchw) return t;
        using (t) return TensorMemory.DenseCopy(t, ChannelLayout.ChannelsLast);
    }

    public void Dispose()
    {
        X.Dispose();
        XGrad.Dispose();
        Dy.Dispose();
        Weight.Dispose();
        Bias.Dispose();
    }
}
