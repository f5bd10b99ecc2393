using System.Linq;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Conversion;

/// <summary>What the converter tests share: random γ/β, state-dict keys, and "the same forward and gradients".</summary>
internal static class ConversionAssert
{
    /// <summary>
    /// Random weight in [0.5, 1.5) and bias around 0. TorchSharp's <c>nn.GroupNorm</c> leaves both uninitialised,
    /// and weight 1, bias 0 would hide a swap of the two.
    /// </summary>
    internal static void RandomizeAffine(Parameter weight, Parameter bias)
    {
        using var _ = torch.no_grad();
        weight.copy_(torch.rand(weight.shape, dtype: weight.dtype) + 0.5);
        bias.copy_(torch.randn(bias.shape, dtype: bias.dtype) * 0.5);
    }

    /// <summary>TorchSharp's GroupNorm with random weight and bias.</summary>
    internal static TorchSharp.Modules.GroupNorm TheirNorm(long groups, long channels, double eps = 1e-5, ScalarType dtype = ScalarType.Float64)
    {
        var gn = nn.GroupNorm(groups, channels, eps: eps, dtype: dtype);
        RandomizeAffine(gn.weight, gn.bias!);
        return gn;
    }

    internal static string[] Keys(nn.Module module) => module.state_dict().Keys.ToArray();

    /// <summary>
    /// Forward on the same input, and the gradient of every parameter by name, of both models agree to
    /// <paramref name="tolerance"/> (relative and absolute).
    /// </summary>
    internal static void SameNumerics(nn.Module<Tensor, Tensor> expected, nn.Module<Tensor, Tensor> actual, double tolerance = 1e-12,
        long[]? shape = null, ScalarType dtype = ScalarType.Float64)
    {
        var x = torch.randn(shape ?? [3, 3, 6, 6], dtype: dtype);
        var yExpected = expected.call(x);
        var yActual = actual.call(x);
        Assert.That(yActual.allclose(yExpected, rtol: tolerance, atol: tolerance), Is.True,
            $"forward differs by {(yActual - yExpected).abs().max().ToDouble()}");

        (yExpected * yExpected).sum().backward();
        (yActual * yActual).sum().backward();
        var gradsExpected = expected.named_parameters().ToDictionary(p => p.name, p => p.parameter.grad);
        var gradsActual = actual.named_parameters().ToDictionary(p => p.name, p => p.parameter.grad);
        Assert.That(gradsActual.Keys, Is.EquivalentTo(gradsExpected.Keys));
        foreach (var (name, grad) in gradsExpected)
        {
            Assert.That(grad, Is.Not.Null, name);
            Assert.That(gradsActual[name]!.allclose(grad!, rtol: tolerance * 100, atol: tolerance), Is.True, $"gradient of {name} differs");
        }
    }
}

/// <summary>A Sequential that overrides forward (its items run last to first): adjacency in it means nothing to a converter.</summary>
internal sealed class Reversed : Sequential
{
    public Reversed(params (string, nn.Module<Tensor, Tensor>)[] modules) : base(modules) { }

    public override Tensor forward(Tensor input)
    {
        var x = input;
        for (int i = Count - 1; i >= 0; i--) x = this[i].call(x);
        return x;
    }
}
