using System;
using GroupNormalization.Autograd;
using GroupNormalization.Kernels;
using GroupNormalization.Kernels.Cpu;
using GroupNormalization.Kernels.Threading;
using NUnit.Framework;
using TorchSharp;

namespace GroupNormalization.Tests.Kernels;

/// <summary>
/// The one test override: nested overrides inherit what they do not force, each records what runs under
/// the ones inside it, and they end innermost first on their own thread.
/// </summary>
[TestFixture]
public sealed class KernelOverrideTests
{
    [Test]
    public void ANestedOverrideKeepsWhatItDoesNotForce()
    {
        using var outer = KernelOverride.Force(kernel: KernelKind.DeviceGeneric, backend: ParallelBackend.KernelThreads, strategy: RowStrategy.SplitRows, threads: 3);
        using var inner = KernelOverride.Force(threads: 1);
        Assert.Multiple(() =>
        {
            Assert.That(KernelOverride.Current, Is.SameAs(inner));
            Assert.That(inner.Kernel, Is.EqualTo(KernelKind.DeviceGeneric), "kernel");
            Assert.That(inner.Backend, Is.EqualTo(ParallelBackend.KernelThreads), "backend");
            Assert.That(inner.Strategy, Is.EqualTo(RowStrategy.SplitRows), "strategy");
            Assert.That(inner.Threads, Is.EqualTo(1), "threads: the inner one's own");
        });
    }

    [Test]
    public void WhatRunsUnderAnInnerOverrideIsRecordedByTheOuterToo()
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(new long[] { 2, 6, 5, 5 }).requires_grad_();
        using var outer = KernelOverride.Force(strategy: RowStrategy.SplitRows, threads: 2);
        using (var inner = KernelOverride.Force())
        {
            Functional.group_norm(x, 3).sum().backward();
            Assert.That(inner.Plans, Has.Count.EqualTo(2), "the inner override's plans: forward's and backward's");
            Assert.That(inner.LastForward, Is.EqualTo(ForwardRoute.Graph));
            Assert.That(inner.LastBackward, Is.EqualTo(BackwardRoute.Kernel));
        }
        Assert.Multiple(() =>
        {
            Assert.That(outer.Plans, Has.Count.EqualTo(2), "the outer override's plans");
            Assert.That(outer.Plans, Has.All.Matches<WorkPlan>(p => p.Blocks >= 2 && p.Threads == 2), "planned as the outer one forced");
            Assert.That(outer.LastForward, Is.EqualTo(ForwardRoute.Graph));
            Assert.That(outer.LastBackward, Is.EqualTo(BackwardRoute.Kernel));
            Assert.That(outer.LastThreads, Is.EqualTo(2));
        });
    }

    [Test]
    public void OverridesEndInnermostFirst()
    {
        var outer = KernelOverride.Force(threads: 2);
        var inner = KernelOverride.Force(threads: 1);
        Assert.That(outer.Dispose, Throws.InvalidOperationException);
        inner.Dispose();
        outer.Dispose();
        Assert.That(KernelOverride.Current, Is.Null);
    }

    [Test]
    public void OverridesAreChecked() => Assert.Multiple(() =>
    {
        Assert.That(() => KernelOverride.Force(threads: 0), Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(KernelOverride.Current, Is.Null, "a refused override is not in force");
    });
}
