using System;
using System.Collections;
using System.Collections.Generic;
using System.Linq;
using System.Reflection;
using GroupNormalization.Autograd;
using GroupNormalization.Interop;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Interop;

/// <summary>
/// The library degrades quietly when a TorchSharp internal is missing (more memory, a slower kernel, a
/// converter that refuses Sequentials), so a TorchSharp update that drops one would go unnoticed without this.
/// </summary>
public sealed class TorchSharpInternalsTests
{
    [Test]
    public void EveryInternalIsFoundInTheTorchSharpWeShipAgainst()
    {
        using var scope = NewDisposeScope();
        // The native export is looked up once; do it with TorchSharp's native library loaded, as the kernels do.
        _ = torch.zeros(1);
        var missing = TorchSharpInternals.All.Where(i => !i.Found).Select(i => $"{i.Name} (so {i.WhenMissing})").ToList();
        Assert.That(missing, Is.Empty,
            $"TorchSharp {typeof(torch).Assembly.GetName().Version} lacks: {string.Join("; ", missing)}");
    }

    [Test]
    public void EachInternalAnswersItsFoundFlag()
    {
        using var scope = NewDisposeScope();
        _ = torch.zeros(1);
        Assert.That(TorchSharpInternals.All.Select(i => i.Name), Is.Unique);
        Assert.That(TorchSharpInternals.OutputCacheFound, Is.EqualTo(TorchSharpInternals.All[0].Found));
        Assert.That(TorchSharpInternals.SequentialItemsFound, Is.EqualTo(TorchSharpInternals.All[1].Found));
        Assert.That(TorchSharpInternals.DataPointerAvailable, Is.EqualTo(TorchSharpInternals.All[2].Found));
    }

    [Test]
    public unsafe void DataPointerIsTheAddressOfTheFirstElementIncludingTheStorageOffset()
    {
        using var scope = NewDisposeScope();
        var t = torch.arange(10, dtype: ScalarType.Float32);
        var view = t[2..];
        var p = (float*)TorchSharpInternals.DataPointer(t);
        var q = (float*)TorchSharpInternals.DataPointer(view);
        Assert.That(q - p, Is.EqualTo(2));
        Assert.That((p[0], q[0], q[7]), Is.EqualTo((0f, 2f, 9f)));
        GC.KeepAlive(t);
        GC.KeepAlive(view);
    }

    /// <summary>
    /// TorchSharp gives every custom-Function node an empty_like(output) that it keeps until the graph is
    /// freed; ours must be disposed by the time apply returns, not only unreachable, so that a training step
    /// holds no more memory than with the built-in. Checked twice: the node's cache (found in TorchSharp's
    /// registry of live nodes) holds no live tensor, and our forward leaves as many live tensors on this
    /// thread as the built-in's (y alone), which it would not if the cache were dropped without Dispose.
    /// </summary>
    [Test]
    public void OutputCacheIsDisposedWhenApplyReturns()
    {
        using var scope = NewDisposeScope();
        using var gn = new GroupNorm(2, 8);
        // 16,384 elements: the smallest output whose cache is released (smaller ones stay with the graph).
        var x = torch.randn(2, 8, 32, 32).requires_grad_();
        // Gradients held from an earlier test on this thread would be released inside our forward, and counted.
        ReturnedGradients.ReleasePrevious();

        var nodesBefore = LiveNodes();
        long liveBefore = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        var y = gn.forward(x);
        long oursLeft = DisposeScopeManager.Statistics.ThreadTotalLiveCount - liveBefore;
        var ourNodes = LiveNodes().Except(nodesBefore)
            .Where(n => n.GetType().IsGenericType && n.GetType().GetGenericArguments()[0] == typeof(GroupNormFunction))
            .ToList();

        liveBefore = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        var builtIn = torch.nn.functional.group_norm(x, 2, gn.weight, gn.bias, 1e-5);
        long builtInLeft = DisposeScopeManager.Statistics.ThreadTotalLiveCount - liveBefore;

        Assert.That(ourNodes, Has.Count.EqualTo(1), "GroupNormFunction nodes created by one forward");
        var cache = CacheOf(ourNodes[0]);
        Assert.Multiple(() =>
        {
            Assert.That(cache.Where(t => t is not null && !t.IsInvalid).Count(), Is.Zero,
                $"live tensors in the node's output cache after apply (of {cache.Count} entries)");
            Assert.That(oursLeft, Is.EqualTo(builtInLeft), "live tensors a forward leaves on this thread: ours vs the built-in's");
        });
        GC.KeepAlive(y);
        GC.KeepAlive(builtIn);
    }

    /// <summary>TorchSharp's registry of custom-Function nodes whose graphs are alive (Node.AliveNodes).</summary>
    private static HashSet<object> LiveNodes()
    {
        var nodeType = typeof(autograd.AutogradContext).GetField("_node", BindingFlags.NonPublic | BindingFlags.Instance)!.FieldType;
        var registry = (IList)nodeType.GetField("AliveNodes", BindingFlags.NonPublic | BindingFlags.Static)!.GetValue(null)!;
        lock (registry) return new HashSet<object>(registry.Cast<object>(), ReferenceEqualityComparer.Instance);
    }

    private static List<Tensor?> CacheOf(object node) =>
        (List<Tensor?>)node.GetType().GetField("_outputCache", BindingFlags.NonPublic | BindingFlags.Instance)!.GetValue(node)!;

    [Test]
    public void ForwardAndBackwardWorkWithTheOutputCacheReleased()
    {
        using var scope = NewDisposeScope();
        // Through the public path: a graph-recording forward then backward still works with the cache gone.
        using var gn = new GroupNorm(2, 8);
        var x = torch.randn(2, 8, 32, 32).requires_grad_();
        var y = gn.forward(x);
        y.sum().backward();
        Assert.That(x.grad, Is.Not.Null);
        Assert.That(GroupNormalization.Autograd.OutputCacheRelease.Supported, Is.EqualTo(TorchSharpInternals.OutputCacheFound));
    }
}
