using System;
using System.Collections.Concurrent;
using System.Linq;
using System.Runtime.InteropServices;
using System.Threading;
using System.Threading.Tasks;
using GroupNormalization.Kernels;
using GroupNormalization.Kernels.Threading;
using GroupNormalization.Tests.Parity;
using GroupNormalization.Tests.Support;
using NUnit.Framework;

namespace GroupNormalization.Tests.Kernels.Threading;

/// <summary>
/// The kernels' parallel loop on both backends (libtorch's OpenMP team and our own worker threads): every
/// item runs exactly once whoever claims it, with concurrent callers, nested calls and failing items.
/// </summary>
public sealed unsafe class ParallelForTests
{
    /// <summary>The backend under test: libtorch's OpenMP team (true) or our own worker threads (false).</summary>
    internal static KernelOverride Force(bool openMp) =>
        KernelOverride.Force(backend: openMp ? ParallelBackend.OpenMp : ParallelBackend.KernelThreads);

    [Test]
    public void OpenMpIsAvailableOnLinux()
    {
        if (!OperatingSystem.IsLinux()) Assert.Ignore("libtorch's OpenMP team is looked for on Linux and macOS; this check runs on Linux.");
        Assert.That(OpenMpTeam.Available, Is.True, OpenMpTeam.Unavailable);
        Assert.That(ParallelFor.DefaultBackend, Is.EqualTo(ParallelBackend.OpenMp));
    }

    [Test]
    public void RunsEveryItemExactlyOnce([Values] bool openMp,
        [Values(1L, 2L, 7L, 1000L, 100_003L)] long count, [Values(1, 2, 8)] int threads)
    {
        var hits = new int[count];
        using (Force(openMp))
            Run(count, threads, i => Interlocked.Increment(ref hits[i]));
        Assert.That(hits, Is.All.EqualTo(1));
    }

    [Test]
    public void ConcurrentCallersEachGetAllTheirItems([Values] bool openMp)
    {
        const int callers = 6, rounds = 20, perRound = 1000;
        var hits = new int[callers, rounds * perRound];
        System.Threading.Tasks.Parallel.For(0, callers, new ParallelOptions { MaxDegreeOfParallelism = callers }, caller =>
        {
            using var forced = Force(openMp);
            for (int round = 0; round < rounds; round++)
                Run(perRound, 2, i => Interlocked.Increment(ref hits[caller, round * perRound + i]));
        });
        Assert.That(hits.Cast<int>(), Is.All.EqualTo(1));
    }

    [Test]
    public void AFailingItemIsRethrownOnTheCaller([Values] bool openMp)
    {
        using var forced = Force(openMp);
        var e = Assert.Throws<AggregateException>(() =>
            Run(64, 2, i =>
            {
                if (i == 37) throw new InvalidOperationException("item 37");
            }));
        Assert.That(e!.InnerException, Is.TypeOf<InvalidOperationException>().With.Message.EqualTo("item 37"));
        // The backend is still usable afterwards.
        var hits = new int[64];
        Run(64, 2, i => Interlocked.Increment(ref hits[i]));
        Assert.That(hits, Is.All.EqualTo(1));
    }

    /// <summary>
    /// Thread t of T starts on items [t·n/T, (t+1)·n/T), the part libtorch's own loops give it (and so the
    /// part its cache holds after the op before), and takes over the other ranges only afterwards.
    /// </summary>
    [Test]
    public void AThreadStartsOnItsOwnRangeThenTakesOverTheOthers()
    {
        var starts = new System.Collections.Generic.List<long>();
        var hits = new int[100];
        var handle = GCHandle.Alloc((starts, hits));
        try
        {
            var job = new ParallelJob(100, 4, &RecordChunk, (void*)GCHandle.ToIntPtr(handle), IntPtr.Zero);
            job.Work(2);
            Assert.That(job.Finished, Is.True);
        }
        finally
        {
            handle.Free();
        }
        Assert.Multiple(() =>
        {
            Assert.That(starts[0], Is.EqualTo(50), "thread 2 of 4 starts at item 50");
            Assert.That(starts.TakeWhile(s => s < 75).All(s => s >= 50), Is.True, "its own range comes first");
            Assert.That(hits, Is.All.EqualTo(1), "alone, it runs every range");
        });
    }

    private static void RecordChunk(void* state, long start, long end)
    {
        var (starts, hits) = ((System.Collections.Generic.List<long>, int[]))GCHandle.FromIntPtr((IntPtr)state).Target!;
        starts.Add(start);
        for (long i = start; i < end; i++) hits[i]++;
    }

    /// <summary>
    /// A count above the machine's cores is honoured, as libtorch's OpenMP team honours
    /// torch.set_num_threads above them: the loop reports that many threads and that many distinct threads
    /// run its items (each holds its first chunk until all have arrived, or 5 s pass). Before, our own
    /// threads were capped at the core count while the loop reported the count asked for.
    /// </summary>
    [Test]
    public void MoreThreadsThanCoresRunWhenAskedFor([Values] bool openMp)
    {
        StrategyParityTests.RequireBackend(openMp);
        int threads = Environment.ProcessorCount + 1;
        RequireTeamOf(openMp, threads);
        var hits = new int[64 * threads];
        System.Collections.Generic.IReadOnlyCollection<int> seen;
        int reported;
        using (var forced = Force(openMp).WatchThreads(threads, TimeSpan.FromSeconds(5)))
        {
            Run(hits.Length, threads, i => Interlocked.Increment(ref hits[i]));
            reported = forced.LastThreads;
            seen = forced.ExecutingThreads;
        }
        Assert.Multiple(() =>
        {
            Assert.That(reported, Is.EqualTo(threads), "threads the loop reports it ran on");
            Assert.That(seen, Has.Count.EqualTo(threads), "distinct threads that ran items");
            Assert.That(hits, Is.All.EqualTo(1));
        });
    }

    /// <summary>A loop started from inside a loop's item runs on that item's thread, as libtorch's parallel_for does.</summary>
    [Test]
    public void ANestedLoopRunsEveryItemOnce([Values] bool openMp)
    {
        using var forced = Force(openMp);
        var hits = new int[16 * 100];
        Run(16, 2, outer =>
        {
            using var inner = Force(openMp);
            Run(100, 2, i => Interlocked.Increment(ref hits[outer * 100 + i]));
        });
        Assert.That(hits, Is.All.EqualTo(1));
    }

    /// <summary>
    /// The region runs on libtorch's team: as many threads as asked for, numbered 0..T−1 by the runtime,
    /// on distinct OS threads, the caller being thread 0.
    /// </summary>
    [Test]
    public void ARegionRunsOnATeamWithTheCallerAsThreadZero()
    {
        if (!OpenMpTeam.Available) Assert.Ignore(OpenMpTeam.Unavailable!);
        var seen = new ConcurrentDictionary<int, int>();
        var state = GCHandle.Alloc(seen);
        int caller = Environment.CurrentManagedThreadId;
        try
        {
            OpenMpTeamProbe.RunOnEveryThread(2, &RecordThread, (void*)GCHandle.ToIntPtr(state));
        }
        finally
        {
            state.Free();
        }
        Assert.Multiple(() =>
        {
            Assert.That(seen.Keys.OrderBy(k => k), Is.EqualTo(Enumerable.Range(0, 2)), "thread numbers");
            Assert.That(seen.Values.Distinct().Count(), Is.EqualTo(2), "distinct threads");
            Assert.That(seen[0], Is.EqualTo(caller), "thread 0 is the caller");
            Assert.That(OpenMpTeam.InParallel, Is.False, "back outside the region");
        });
    }

    /// <summary>Looking up the runtime loads nothing: exactly one OpenMP runtime is mapped, in libtorch's folder.</summary>
    [Test]
    public void OnlyLibTorchsOwnRuntimeIsMapped()
    {
        if (!OperatingSystem.IsLinux()) Assert.Ignore("reads /proc/self/maps");
        using (var warm = TorchSharp.torch.ones(1)) { }
        Assert.That(OpenMpTeam.Available, Is.True, OpenMpTeam.Unavailable);
        var images = OpenMpRuntimeLocator.LinuxImages();
        var runtimes = images.Where(p => OpenMpRuntimeLocator.IsOpenMpRuntime(System.IO.Path.GetFileName(p))).Distinct().ToList();
        var torch = images.First(p => OpenMpRuntimeLocator.IsLibTorch(System.IO.Path.GetFileName(p)));
        Assert.Multiple(() =>
        {
            Assert.That(runtimes, Is.EqualTo(new[] { OpenMpTeam.RuntimePath }), "mapped OpenMP runtimes");
            Assert.That(System.IO.Path.GetDirectoryName(OpenMpTeam.RuntimePath), Is.EqualTo(System.IO.Path.GetDirectoryName(torch)));
        });
    }

    [TestCase("/a/libgomp.so.1|/t/libtorch_cpu.so|/t/libgomp-98b21ff3.so.1", "/t/libgomp-98b21ff3.so.1", TestName = "libtorch's folder wins")]
    [TestCase("/x/libtorch.so|/usr/lib/libgomp.so.1", "/usr/lib/libgomp.so.1", TestName = "the only runtime loaded")]
    [TestCase("/a/libgomp.so.1|/b/libomp.so", null, TestName = "two runtimes and no libtorch: none")]
    [TestCase("/t/libtorch_cpu.dylib|/t/libomp.dylib", "/t/libomp.dylib", TestName = "macOS names")]
    [TestCase("/t/libtorch_cpu.so|/t/libgompfoo.txt", null, TestName = "not a library")]
    public void ChoosesTheRuntimeLibTorchUses(string images, string? expected) =>
        Assert.That(OpenMpRuntimeLocator.Choose(images.Split('|')), Is.EqualTo(expected));

    private static void RecordThread(void* state)
    {
        var seen = (ConcurrentDictionary<int, int>)GCHandle.FromIntPtr((IntPtr)state).Target!;
        seen[OpenMpTeamProbe.ThreadNum] = Environment.CurrentManagedThreadId;
        // Hold every thread until both have arrived, so that neither can be the other.
        var deadline = DateTime.UtcNow.AddSeconds(5);
        while (seen.Count < 2 && DateTime.UtcNow < deadline) Thread.SpinWait(100);
    }

    /// <summary>Ignores a test whose OpenMP team would be cut below <paramref name="threads"/> by the runtime's own limit.</summary>
    internal static void RequireTeamOf(bool openMp, int threads)
    {
        if (openMp && OpenMpTeamProbe.ThreadLimit < threads)
            Assert.Ignore($"libtorch's OpenMP runtime limits a team to {OpenMpTeamProbe.ThreadLimit} threads (OMP_THREAD_LIMIT); this test needs {threads}.");
    }

    /// <summary>Runs a managed lambda through the loop's function-pointer interface.</summary>
    internal static void Run(long count, int threads, Action<long> item)
    {
        var handle = GCHandle.Alloc(item);
        try
        {
            ParallelFor.Run(count, threads, &Items, (void*)GCHandle.ToIntPtr(handle));
        }
        finally
        {
            handle.Free();
        }
    }

    private static void Items(void* state, long start, long end)
    {
        var item = (Action<long>)GCHandle.FromIntPtr((IntPtr)state).Target!;
        for (long i = start; i < end; i++) item(i);
    }
}
