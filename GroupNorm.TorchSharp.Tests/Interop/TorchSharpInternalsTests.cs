using System;
using System.Linq;
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
