using System;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ResNetCifar.Models;

/// <summary>
/// Builds the normalization layer for a given channel count. The group count is <c>groups</c>, or
/// C / channelsPerGroup when that is set; either way it must divide every channel count of the network.
/// With <c>batchNormSlice</c>, BatchNorm takes its training statistics over slices of that many images
/// (<see cref="GhostBatchNorm2d"/>), as BatchNorm on devices that each see that many images. With
/// <c>fuse</c>, our GroupNorm takes the activation a block asks for into the same layer.
/// </summary>
internal sealed class NormFactory(NormKind kind, long groups = 8, long? channelsPerGroup = null, int? batchNormSlice = null, bool fuse = true)
{
    public NormKind Kind { get; } = kind;

    /// <summary>Whether <see cref="Create"/> fuses the activation it is given into our GroupNorm.</summary>
    public bool Fuse { get; } = fuse;

    public int? BatchNormSlice { get; } = batchNormSlice;

    public long GroupsFor(long channels)
    {
        var g = channelsPerGroup is long perGroup ? channels / perGroup : groups;
        if (g < 1 || channels % g != 0)
        {
            var rule = channelsPerGroup is long p ? $"--channels-per-group {p}" : $"--groups {groups}";
            throw new ArgumentException($"{rule} gives {g} groups for a {channels}-channel layer; the group count must divide the channel count.");
        }
        return g;
    }

    /// <summary>
    /// A norm for <paramref name="channels"/> channels. <paramref name="then"/> is the activation the caller
    /// applies next: our GroupNorm takes it in when <see cref="Fuse"/> is on (see <see cref="Fused"/>), every
    /// other norm leaves it to the caller.
    /// </summary>
    public nn.Module<Tensor, Tensor> Create(long channels, GroupNormalization.Activation then = GroupNormalization.Activation.None) => Kind switch
    {
        NormKind.Gn => new GroupNormalization.GroupNorm(GroupsFor(channels), channels, activation: Fuse ? then : GroupNormalization.Activation.None),
        NormKind.Bn when BatchNormSlice is int slice => new GhostBatchNorm2d(channels, slice),
        NormKind.Bn => nn.BatchNorm2d(channels),
        NormKind.GnBuiltin => CreateBuiltin(channels),
        NormKind.None => nn.Identity(),
        _ => throw new InvalidOperationException($"Unknown norm {Kind}."),
    };

    /// <summary>Our GroupNorm with <paramref name="activation"/> fused in, or null when the caller must apply it.</summary>
    public static GroupNormalization.GroupNorm? Fused(nn.Module<Tensor, Tensor> norm, GroupNormalization.Activation activation) =>
        norm is GroupNormalization.GroupNorm ours && ours.activation == activation ? ours : null;

    /// <summary>Sets a norm layer's γ to zero, so that a residual block starts as the identity (Wu &amp; He; Goyal et al.).</summary>
    public static void ZeroGamma(nn.Module<Tensor, Tensor> norm)
    {
        using var _ = torch.no_grad();
        switch (norm)
        {
            case GroupNormalization.GroupNorm ours: ours.weight?.zero_(); break;
            case TorchSharp.Modules.GroupNorm builtin: builtin.weight.zero_(); break;
            case BatchNorm bn: bn.weight.zero_(); break;
            case GhostBatchNorm2d ghost: ghost.Weight.zero_(); break;
            case TorchSharp.Modules.Identity: break;
            default: throw new ArgumentException($"Cannot zero the scale of {norm.GetType().Name}.", nameof(norm));
        }
    }

    private nn.Module<Tensor, Tensor> CreateBuiltin(long channels)
    {
        var gn = nn.GroupNorm(GroupsFor(channels), channels);
        // TorchSharp 0.107 allocates nn.GroupNorm's weight and bias with torch.empty and never initializes them.
        using (torch.no_grad())
        {
            gn.weight.fill_(1);
            gn.bias!.zero_();
        }
        return gn;
    }
}
