using System.Collections.Generic;
using GroupNormalization;
using TorchSharp;

namespace ResNetCifar.Tests.Models;

/// <summary>Gives pairs of GroupNorms the same random γ and β, so that two networks meant to be equal can be compared on values that show every norm.</summary>
internal static class TwinNorms
{
    /// <summary>γ uniform in [0.5, 1.5) and β normal with σ = 0.1, the same in both norms of each pair.</summary>
    public static void Randomize(IEnumerable<(GroupNorm A, GroupNorm B)> pairs, torch.Generator generator)
    {
        using var noGrad = torch.no_grad();
        foreach (var (a, b) in pairs)
        {
            var weight = torch.rand(a.weight!.shape, generator: generator) + 0.5;
            var bias = torch.randn(a.bias!.shape, generator: generator) * 0.1;
            a.weight!.copy_(weight);
            b.weight!.copy_(weight);
            a.bias!.copy_(bias);
            b.bias!.copy_(bias);
        }
    }
}
