using System;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;
using GroupNormalization.Kernels;
using NUnit.Framework;

namespace GroupNormalization.Tests;

/// <summary>
/// The fused kernels' thread pool: every item runs exactly once, whoever claims it, including when
/// several callers share the workers and when a job is finished before a worker wakes.
/// </summary>
public sealed class KernelThreadsTests
{
    [TestCase(1L, 2)]
    [TestCase(2L, 2)]
    [TestCase(7L, 4)]
    [TestCase(1000L, 2)]
    [TestCase(100_003L, 8)]
    public void RunsEveryItemExactlyOnce(long count, int threads)
    {
        var hits = new int[count];
        KernelThreads.Run(count, threads, i => Interlocked.Increment(ref hits[i]));
        Assert.That(hits, Is.All.EqualTo(1));
    }

    [Test]
    public void ConcurrentCallersEachGetAllTheirItems()
    {
        const int callers = 6, count = 20_000;
        var hits = new int[callers, count];
        Parallel.For(0, callers, new ParallelOptions { MaxDegreeOfParallelism = callers }, caller =>
        {
            for (int round = 0; round < 20; round++)
                KernelThreads.Run(count / 20, 2, i => Interlocked.Increment(ref hits[caller, round * (count / 20) + i]));
        });
        Assert.That(hits.Cast<int>(), Is.All.EqualTo(1));
    }

    [Test]
    public void AFailingItemIsRethrownOnTheCaller()
    {
        var e = Assert.Throws<AggregateException>(() =>
            KernelThreads.Run(64, 2, i =>
            {
                if (i == 37) throw new InvalidOperationException("item 37");
            }));
        Assert.That(e!.InnerException, Is.TypeOf<InvalidOperationException>().With.Message.EqualTo("item 37"));
    }
}
