using System;
using System.Linq;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace GroupNormalization.Benchmarks;

/// <summary>How a <see cref="DiffusionBlock"/> computes SiLU(GroupNorm(h)).</summary>
internal enum DiffusionNorm
{
    /// <summary>libtorch's group_norm, then its silu.</summary>
    Builtin,

    /// <summary>Our group_norm, then libtorch's silu.</summary>
    OursPlain,

    /// <summary>Our group_norm with the SiLU fused in.</summary>
    OursFused,

    /// <summary>
    /// No norm and no SiLU: the convolutions and the skip alone, the time any norm would leave if it cost nothing,
    /// so that its ratio to the built-in is the lowest ratio a norm could reach in this block.
    /// </summary>
    Floor,
}

/// <summary>
/// A diffusion model's residual block as Stable Diffusion's VAE and UNet write it, without the UNet's time
/// embedding: h = Conv3×3(SiLU(GN(x))); h = Conv3×3(SiLU(GN(h))); out = x + h, with C channels in and out,
/// padding 1, convolution biases, 32 groups and eps 1e-6. One set of weights serves every
/// <see cref="DiffusionNorm"/>, so that the sides of a comparison differ in the norm and nothing else.
/// </summary>
internal sealed class DiffusionBlock : IDisposable
{
    public const long Groups = 32;

    public const double Eps = 1e-6;

    private readonly Conv2d _conv1, _conv2;
    private readonly Tensor _gamma1, _beta1, _gamma2, _beta2;

    /// <summary>Random weights (convolutions at their default initialisation, γ in [0.5, 1.5), β normal) in <paramref name="dtype"/>, each a leaf that requires grad.</summary>
    public DiffusionBlock(long channels, ScalarType dtype)
    {
        torch.manual_seed(43);
        _conv1 = nn.Conv2d(channels, channels, 3, padding: 1, bias: true);
        _conv2 = nn.Conv2d(channels, channels, 3, padding: 1, bias: true);
        _conv1.to(dtype);
        _conv2.to(dtype);
        _gamma1 = Parameter(torch.rand(channels) + 0.5, dtype);
        _beta1 = Parameter(torch.randn(channels), dtype);
        _gamma2 = Parameter(torch.rand(channels) + 0.5, dtype);
        _beta2 = Parameter(torch.randn(channels), dtype);
        Parameters = new[] { _conv1.weight!, _conv1.bias!, _gamma1, _beta1, _conv2.weight!, _conv2.bias!, _gamma2, _beta2 };
    }

    /// <summary>Every weight of the block: both convolutions' weights and biases, both norms' γ and β.</summary>
    public Tensor[] Parameters { get; }

    /// <summary>The weights the <see cref="DiffusionNorm.Floor"/> block uses: the convolutions'.</summary>
    public Tensor[] ConvolutionParameters => new[] { _conv1.weight!, _conv1.bias!, _conv2.weight!, _conv2.bias! };

    public Tensor Forward(Tensor x, DiffusionNorm norm)
    {
        var h = _conv1.forward(NormSiLU(x, _gamma1, _beta1, norm));
        h = _conv2.forward(NormSiLU(h, _gamma2, _beta2, norm));
        return x + h;
    }

    public void Dispose()
    {
        _conv1.Dispose();
        _conv2.Dispose();
        foreach (var t in new[] { _gamma1, _beta1, _gamma2, _beta2 }) t.Dispose();
    }

    private static Tensor NormSiLU(Tensor h, Tensor gamma, Tensor beta, DiffusionNorm norm) => norm switch
    {
        DiffusionNorm.Floor => h,
        DiffusionNorm.Builtin => torch.nn.functional.silu(torch.nn.functional.group_norm(h, Groups, gamma, beta, Eps)),
        DiffusionNorm.OursPlain => torch.nn.functional.silu(Functional.group_norm(h, Groups, gamma, beta, Eps)),
        _ => Functional.group_norm(h, Groups, gamma, beta, Eps, activation: Activation.SiLU),
    };

    private static Tensor Parameter(Tensor value, ScalarType dtype)
    {
        using (value)
        {
            using var converted = value.to(dtype);
            return converted.detach().requires_grad_();
        }
    }

    /// <summary>
    /// The largest difference between <paramref name="actual"/> and <paramref name="expected"/> relative to the
    /// largest magnitude in <paramref name="expected"/>, worst over the pairs, computed in float64.
    /// </summary>
    public static double RelativeDifference(Tensor[] actual, Tensor[] expected) =>
        actual.Zip(expected, (a, e) =>
        {
            using var scope = torch.NewDisposeScope();
            var a64 = a.to(ScalarType.Float64);
            var e64 = e.to(ScalarType.Float64);
            double scale = e64.abs().max().item<double>();
            double diff = (a64 - e64).abs().max().item<double>();
            return scale > 0 ? diff / scale : diff;
        }).Max();
}
