using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using TorchSharp;
using static TorchSharp.torch;

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
///   --no-recycle  our outputs from libtorch's allocator (Memory.recycle_outputs = false), to measure what recycling does
///   --suite S   with --interleaved: default (isolation, in-network, fixed cost), activation (fused GN+SiLU, GN+GELU and
///               GN+ReLU against group_norm then silu/gelu/relu, float32), half (float16 and bfloat16) or residual
///               (fused GN+add+ReLU against group_norm, add_, relu_) or diffusion (Stable Diffusion's residual block,
///               GN → SiLU → Conv3×3 twice plus the skip, built-in against ours plain and ours fused; float32 and
///               bfloat16 forward, float32 forward+backward)
///   --act A     with --suite activation: only activation A (SiLU, ReLU or GELU); repeatable; default all three
///   --rounds N  with --interleaved: rounds per comparison (default 15, the diffusion suite's
///               Interleaved.DiffusionRounds, 2 with --quick)
///   --shape S   only the BenchCase shapes whose name (e.g. 2x320x64x64/G32) contains S; repeatable. Applies to
///               the interleaved isolation, activation, half, residual and diffusion suites and to the GroupNorm,
///               FusedActivation and HalfPrecision classes; with it, --quick no longer narrows the shapes to its one
///   --max-numel N  only BenchCase shapes of at most N elements (e.g. 5000000 leaves out the VAE's 8.4 M)
///   --filter *Overhead*   BenchmarkDotNet's own filters work as usual; *FusedActivation* and *HalfPrecision*
///               select the new classes
/// </summary>
public static class Program
{
    private static readonly string[] AllBenchmarks = { "--filter", "*" };

    private static readonly List<string> ShapeFilters = new();
    private static long _maxNumel = long.MaxValue;

    public static bool Quick { get; private set; }

    /// <summary>The fused activations the activation suite compares (--act), all of them by default.</summary>
    public static IReadOnlyList<Activation> Activations { get; private set; } = Enum.GetValues<Activation>().Where(a => a != Activation.None).ToArray();

    /// <summary>The built-in activation op that the fused one replaces, as a model written without us calls it.</summary>
    public static Tensor BuiltinActivation(Tensor z, Activation act) => act switch
    {
        Activation.SiLU => torch.nn.functional.silu(z),
        Activation.ReLU => torch.nn.functional.relu(z),
        Activation.GELU => torch.nn.functional.gelu(z),
        _ => z,
    };

    /// <summary>
    /// The shapes of a suite after --shape and --max-numel; --quick's one small shape only when neither is given,
    /// so that a quick run can still be pointed at one particular shape.
    /// </summary>
    public static IEnumerable<BenchCase> Cases(IEnumerable<BenchCase> full, IEnumerable<BenchCase>? quick = null)
    {
        if (ShapeFilters.Count == 0 && _maxNumel == long.MaxValue) return Quick ? quick ?? BenchCase.Quick : full;
        return full.Where(c => c.Numel <= _maxNumel
            && (ShapeFilters.Count == 0 || ShapeFilters.Any(f => c.ToString().Contains(f, StringComparison.OrdinalIgnoreCase))));
    }

    public static int Main(string[] args)
    {
        var rest = new List<string>(args);
        Quick = rest.Remove("--quick");
        string suite = "default";
        int? rounds = null;
        try
        {
            while (TakeValue(rest, "--shape") is { } shape) ShapeFilters.Add(shape);
            if (TakeValue(rest, "--max-numel") is { } max) _maxNumel = long.Parse(max, CultureInfo.InvariantCulture);
            if (TakeValue(rest, "--rounds") is { } r) rounds = int.Parse(r, CultureInfo.InvariantCulture);
            if (TakeValue(rest, "--suite") is { } s) suite = s;
            var acts = new List<Activation>();
            while (TakeValue(rest, "--act") is { } a) acts.Add(Enum.Parse<Activation>(a, ignoreCase: true));
            if (acts.Count > 0) Activations = acts;
        }
        catch (Exception e) when (e is FormatException or OverflowException or ArgumentException)
        {
            Console.Error.WriteLine(e.Message);
            return 2;
        }
        if (rounds is < 1)
        {
            Console.Error.WriteLine("--rounds must be at least 1.");
            return 2;
        }
        if (rest.Remove("--memory")) return PeakMemory.Run(Quick, Console.Out);
        bool warm = rest.Remove("--warm-allocator");
        if (rest.Remove("--no-recycle")) Memory.recycle_outputs = false;
        if (warm)
        {
            bool kept = GlibcAllocator.KeepFreedMemory();
            Console.WriteLine(kept ? "Warm allocator: glibc keeps freed memory (mmap threshold 32 MiB, trim threshold 1 GiB)." : "Warm allocator: not glibc, nothing changed.");
        }
        if (rest.Remove("--interleaved")) return Interleaved.Run(suite, rounds, Console.Out);
        if (suite != "default")
        {
            // BenchmarkDotNet would take it for a filter-less run of everything.
            Console.Error.WriteLine("--suite goes with --interleaved; for BenchmarkDotNet use --filter *FusedActivation* or *HalfPrecision*.");
            return 2;
        }
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

    /// <summary>Removes <paramref name="option"/> and the value after it; null when the option is absent.</summary>
    private static string? TakeValue(List<string> args, string option)
    {
        int i = args.IndexOf(option);
        if (i < 0) return null;
        if (i + 1 >= args.Count) throw new ArgumentException($"{option} needs a value.");
        string value = args[i + 1];
        args.RemoveRange(i, 2);
        return value;
    }
}
