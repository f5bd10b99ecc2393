using System;
using System.Collections.Generic;
using System.Linq;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Support;

/// <summary>Second derivatives of a GroupNorm through autograd: what double backward must get right.</summary>
internal static class SecondOrder
{
    /// <summary>
    /// With (dx, dweight, dbias) = the gradients of y = <paramref name="groupNorm"/>(x, w, b) for an upstream
    /// <paramref name="dy"/>, taken with create_graph, and s = Σ dx·<paramref name="u"/> + Σ dweight·<paramref name="v"/>
    /// + Σ dbias·<paramref name="t"/> over the directions given: ∂s/∂dy, ∂s/∂x, ∂s/∂weight and ∂s/∂bias, with
    /// zeros where s does not depend on one.
    /// </summary>
    public static Tensor[] Derivatives(Func<Tensor, Tensor, Tensor, Tensor> groupNorm, Tensor x, Tensor w, Tensor b, Tensor dy,
        Tensor? u, Tensor? v = null, Tensor? t = null)
    {
        var dyl = dy.detach().requires_grad_();
        var xl = x.detach().requires_grad_();
        var wl = w.detach().requires_grad_();
        var bl = b.detach().requires_grad_();
        var leaves = new[] { dyl, xl, wl, bl };
        var y = groupNorm(xl, wl, bl);
        // TorchSharp does not imply retain_graph from create_graph, as PyTorch does.
        var first = torch.autograd.grad(new[] { y }, new[] { xl, wl, bl }, new[] { dyl }, create_graph: true, retain_graph: true);
        var terms = new List<Tensor>();
        if (u is not null) terms.Add((first[0] * u).sum());
        if (v is not null) terms.Add((first[1] * v).sum());
        if (t is not null) terms.Add((first[2] * t).sum());
        var s = terms.Aggregate((a, c) => a + c);
        // A backward that recorded nothing leaves s without a graph; autograd.grad would end the process.
        if (!s.requires_grad) return leaves.Select(l => torch.zeros_like(l)).ToArray();
        // allow_unused: bias reaches dx only through SiLU′(z), and TorchSharp terminates the process when
        // autograd.grad meets an input outside the graph otherwise.
        var second = torch.autograd.grad(new[] { s }, leaves, allow_unused: true);
        return second.Select((g, i) => g is null || g.IsInvalid ? torch.zeros_like(leaves[i]) : g).ToArray();
    }
}
