using System;
using System.Collections.Generic;
using System.Linq;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;

namespace GroupNormalization.Benchmarks;

/// <summary>
/// dotnet run -c Release --project benchmarks/GroupNorm.Benchmarks -- [--quick] [--memory] [BenchmarkDotNet args]
///   (no args)   every benchmark, then the README table (BenchmarkDotNet.Artifacts/groupnorm-table.md)
///   --quick     one small shape, one iteration each: a smoke test that every benchmark runs
///   --memory    peak resident memory of forward+backward, ours against the built-in
///   --interleaved  ours and the built-in in alternating blocks, ratio per round (robust to machine drift):
///               isolation, in-network (Conv2d → GroupNorm → ReLU) and fixed cost
///   --warm-allocator  glibc keeps freed memory (see GlibcAllocator.KeepFreedMemory), so that page faults
///               from the heap state earlier benchmarks left do not land on one side of a comparison
///   --filter *Overhead*   BenchmarkDotNet's own filters work as usual
/// </summary>
public static class Program
{
    private static readonly string[] AllBenchmarks = { "--filter", "*" };

    public static bool Quick { get; private set; }

    public static int Main(string[] args)
    {
        var rest = new List<string>(args);
        Quick = rest.Remove("--quick");
        if (rest.Remove("--memory")) return PeakMemory.Run(Quick, Console.Out);
        bool warm = rest.Remove("--warm-allocator");
        if (warm)
        {
            bool kept = GlibcAllocator.KeepFreedMemory();
            Console.WriteLine(kept ? "Warm allocator: glibc keeps freed memory (mmap threshold 32 MiB, trim threshold 1 GiB)." : "Warm allocator: not glibc, nothing changed.");
        }
        if (rest.Remove("--interleaved")) return Interleaved.Run(Quick, Console.Out);
        if (!rest.Contains("--filter")) rest.AddRange(AllBenchmarks);

        // In-process: the tensors' native library is loaded once, and no per-benchmark project is built.
        var job = (Quick ? Job.Dry : Job.Default.WithWarmupCount(3).WithIterationCount(10).WithIterationTime(Perfolizer.Horology.TimeInterval.FromMilliseconds(200)).WithLaunchCount(1))
            .WithToolchain(InProcessEmitToolchain.Instance)
            .AsDefault();
        var config = DefaultConfig.Instance.AddJob(job).WithOptions(ConfigOptions.JoinSummary);

        var summaries = BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(rest.ToArray(), config).ToList();
        foreach (var summary in summaries) ReportTable.Write(summary, Console.Out);

        bool failed = summaries.Count == 0 || summaries.Any(s => s.HasCriticalValidationErrors || s.Reports.Any(r => !r.Success));
        return failed ? 1 : 0;
    }
}
