using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Text;
using BenchmarkDotNet.Reports;
using static TorchSharp.torch;

namespace GroupNormalization.Benchmarks;

/// <summary>
/// Turns a <see cref="GroupNormBenchmarks"/> run into the README's table: one row per
/// (shape, dtype, layout) with times, ratios to the built-in and effective bandwidth, then the
/// issue's targets (median ratios, worst ratio) computed from the same numbers.
/// </summary>
internal static class ReportTable
{
    private sealed record Key(string Case, ScalarType DType, Layout Layout, long Numel);

    public static void Write(Summary summary, TextWriter console)
    {
        NetworkTable(summary, console);
        ActivationTable(summary, console);
        HalfTable(summary, console);
        var medians = new Dictionary<(Key, string), double>();
        foreach (var report in summary.Reports)
        {
            if (report.ResultStatistics is null) continue;
            var bc = report.BenchmarkCase;
            // The other classes on BenchCase shapes have tables of their own.
            if (bc.Descriptor.Type != typeof(GroupNormBenchmarks) || bc.Parameters["Case"] is not BenchCase c) continue;
            var key = new Key(c.ToString(), (ScalarType)bc.Parameters["DType"], (Layout)bc.Parameters["Layout"], c.Numel);
            medians[(key, bc.Descriptor.WorkloadMethod.Name)] = report.ResultStatistics.Median / 1e6; // ns → ms
        }
        if (medians.Count == 0) return;

        var keys = medians.Keys.Select(k => k.Item1).Distinct()
            .OrderBy(k => k.DType).ThenBy(k => k.Layout).ToList();
        double Get(Key k, string m) => medians.TryGetValue((k, m), out var v) ? v : double.NaN;

        var sb = new StringBuilder();
        sb.AppendLine("| shape/G | dtype | layout | built-in fwd ms | ours fwd ms | ratio | generic ratio | ours fwd GB/s | copy GB/s | built-in fwd+bwd ms | ours fwd+bwd ms | ratio | generic ratio | ours fwd+bwd GB/s |");
        sb.AppendLine("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        var fwdRatios = new List<double>();
        var fbRatios = new List<double>();
        foreach (var k in keys)
        {
            int size = k.DType == ScalarType.Float64 ? 8 : 4;
            // Minimum traffic: forward reads x and writes y; backward reads x and dy and writes dx.
            double fwdBytes = 2.0 * k.Numel * size, fbBytes = 5.0 * k.Numel * size;
            double bf = Get(k, nameof(GroupNormBenchmarks.BuiltinForward)), of = Get(k, nameof(GroupNormBenchmarks.OursForward));
            double gf = Get(k, nameof(GroupNormBenchmarks.GenericForward)), cp = Get(k, nameof(GroupNormBenchmarks.Copy));
            double bb = Get(k, nameof(GroupNormBenchmarks.BuiltinForwardBackward)), ob = Get(k, nameof(GroupNormBenchmarks.OursForwardBackward));
            double gb = Get(k, nameof(GroupNormBenchmarks.GenericForwardBackward));
            if (!double.IsNaN(of / bf)) fwdRatios.Add(of / bf);
            if (!double.IsNaN(ob / bb)) fbRatios.Add(ob / bb);
            sb.Append(CultureInfo.InvariantCulture,
                $"| {k.Case} | {(k.DType == ScalarType.Float64 ? "f64" : "f32")} | {(k.Layout == Layout.Nchw ? "NCHW" : "NHWC")} " +
                $"| {F(bf)} | {F(of)} | {R(of / bf)} | {R(gf / bf)} | {G(fwdBytes, of)} | {G(fwdBytes, cp)} " +
                $"| {F(bb)} | {F(ob)} | {R(ob / bb)} | {R(gb / bb)} | {G(fbBytes, ob)} |\n");
        }
        if (fwdRatios.Count > 0 && fbRatios.Count > 0)
        {
            sb.AppendLine();
            sb.Append(CultureInfo.InvariantCulture,
                $"Median ratio to the built-in: forward {R(Median(fwdRatios))}, forward+backward {R(Median(fbRatios))}; " +
                $"worst: forward {R(fwdRatios.Max())}, forward+backward {R(fbRatios.Max())} ({fwdRatios.Count} configurations).\n");
        }

        var text = sb.ToString();
        console.WriteLine();
        console.WriteLine(text);
        var dir = Path.Combine(summary.ResultsDirectoryPath, "..");
        var path = Path.GetFullPath(Path.Combine(dir, "groupnorm-table.md"));
        File.WriteAllText(path, text);
        console.WriteLine($"Table written to {path}");
    }

    private sealed record NetworkKey(string Case, Layout Layout);

    /// <summary>
    /// The in-network table (<see cref="NetworkBenchmarks"/>): the whole block's time with each GroupNorm, and
    /// the GroupNorm + ReLU part of it (block minus the convolution alone), ours against the built-in.
    /// </summary>
    private static void NetworkTable(Summary summary, TextWriter console)
    {
        var medians = new Dictionary<(NetworkKey, string), double>();
        foreach (var report in summary.Reports)
        {
            if (report.ResultStatistics is null) continue;
            var bc = report.BenchmarkCase;
            if (bc.Parameters["Case"] is not NetworkCase c) continue;
            medians[(new NetworkKey(c.ToString(), (Layout)bc.Parameters["Layout"]), bc.Descriptor.WorkloadMethod.Name)] = report.ResultStatistics.Median / 1e6;
        }
        if (medians.Count == 0) return;
        double Get(NetworkKey k, string m) => medians.TryGetValue((k, m), out var v) ? v : double.NaN;

        var sb = new StringBuilder();
        sb.AppendLine("| block | layout | pass | conv only ms | built-in block ms | ours block ms | ratio | own threads block ms | ratio | built-in GN+ReLU ms | ours GN+ReLU ms | ratio |");
        sb.AppendLine("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        var blockRatios = new List<double>();
        foreach (var k in medians.Keys.Select(k => k.Item1).Distinct().OrderBy(k => k.Layout))
        {
            foreach (var (pass, suffix) in new[] { ("fwd", "NetForward"), ("fwd+bwd", "NetForwardBackward") })
            {
                double conv = Get(k, "ConvOnly" + suffix), builtin = Get(k, "Builtin" + suffix);
                double ours = Get(k, "Ours" + suffix), own = Get(k, "OursOwnThreads" + suffix);
                if (!double.IsNaN(ours / builtin)) blockRatios.Add(ours / builtin);
                sb.Append(CultureInfo.InvariantCulture,
                    $"| {k.Case} | {(k.Layout == Layout.Nchw ? "NCHW" : "NHWC")} | {pass} | {F(conv)} | {F(builtin)} | {F(ours)} | {R(ours / builtin)} " +
                    $"| {F(own)} | {R(own / builtin)} | {F(builtin - conv)} | {F(ours - conv)} | {R((ours - conv) / (builtin - conv))} |\n");
            }
        }
        if (blockRatios.Count > 0)
        {
            sb.AppendLine();
            sb.Append(CultureInfo.InvariantCulture,
                $"Block time, ours over the built-in's: median {R(Median(blockRatios))}, worst {R(blockRatios.Max())} ({blockRatios.Count} rows). Threads: {Kernels.Threading.ParallelFor.Description}.\n");
        }
        var text = sb.ToString();
        console.WriteLine();
        console.WriteLine(text);
        var path = Path.GetFullPath(Path.Combine(summary.ResultsDirectoryPath, "..", "network-table.md"));
        File.WriteAllText(path, text);
        console.WriteLine($"Table written to {path}");
    }

    /// <summary>
    /// <see cref="FusedActivationBenchmarks"/>: the fused call and ours unfused against the built-in group_norm
    /// followed by the built-in activation, per pass, with the median and worst fused ratio of each pass.
    /// </summary>
    private static void ActivationTable(Summary summary, TextWriter console)
    {
        var medians = Medians(summary, typeof(FusedActivationBenchmarks), "Activation");
        if (medians.Count == 0) return;
        double Get((BenchCase, object) k, string m) => medians.TryGetValue((k.Item1, k.Item2, m), out var v) ? v : double.NaN;

        var sb = new StringBuilder();
        sb.AppendLine("| shape/G | act | pass | built-in GN, act ms | ours fused ms | ratio | ours GN, built-in act ms | ratio |");
        sb.AppendLine("|---|---|---|---:|---:|---:|---:|---:|");
        var ratios = new Dictionary<(object, string), List<double>>();
        foreach (var k in medians.Keys.Select(k => (k.Case, k.Param)).Distinct())
        {
            foreach (var (pass, suffix) in new[] { ("fwd", "ActForward"), ("fwd graph", "ActForwardGraph"), ("fwd+bwd", "ActForwardBackward") })
            {
                double builtin = Get(k, "Builtin" + suffix), ours = Get(k, "Ours" + suffix), unfused = Get(k, "Unfused" + suffix);
                if (!double.IsNaN(ours / builtin))
                {
                    if (!ratios.TryGetValue((k.Param, pass), out var list)) ratios[(k.Param, pass)] = list = new List<double>();
                    list.Add(ours / builtin);
                }
                sb.Append(CultureInfo.InvariantCulture,
                    $"| {k.Case} | {k.Param} | {pass} | {F(builtin)} | {F(ours)} | {R(ours / builtin)} | {F(unfused)} | {R(unfused / builtin)} |\n");
            }
        }
        sb.AppendLine();
        foreach (var ((act, pass), list) in ratios)
        {
            sb.Append(CultureInfo.InvariantCulture,
                $"GN+{act} {pass}, fused over the built-in pair: median {R(Median(list))}, worst {R(list.Max())} ({list.Count} shapes).\n");
        }
        Emit(summary, console, sb.ToString(), "activation-table.md");
    }

    /// <summary><see cref="HalfPrecisionBenchmarks"/>: float16 and bfloat16, ours against the built-in in the same dtype.</summary>
    private static void HalfTable(Summary summary, TextWriter console)
    {
        var medians = Medians(summary, typeof(HalfPrecisionBenchmarks), "DType");
        if (medians.Count == 0) return;
        double Get((BenchCase, object) k, string m) => medians.TryGetValue((k.Item1, k.Item2, m), out var v) ? v : double.NaN;

        var sb = new StringBuilder();
        sb.AppendLine("| shape/G | dtype | built-in fwd ms | ours fwd ms | ratio | built-in fwd+bwd ms | ours fwd+bwd ms | ratio |");
        sb.AppendLine("|---|---|---:|---:|---:|---:|---:|---:|");
        var fwd = new Dictionary<object, List<double>>();
        var fb = new Dictionary<object, List<double>>();
        foreach (var k in medians.Keys.Select(k => (k.Case, k.Param)).Distinct().OrderBy(k => (ScalarType)k.Param))
        {
            double bf = Get(k, nameof(HalfPrecisionBenchmarks.BuiltinHalfForward)), of = Get(k, nameof(HalfPrecisionBenchmarks.OursHalfForward));
            double bb = Get(k, nameof(HalfPrecisionBenchmarks.BuiltinHalfForwardBackward)), ob = Get(k, nameof(HalfPrecisionBenchmarks.OursHalfForwardBackward));
            if (!double.IsNaN(of / bf)) Add(fwd, k.Param, of / bf);
            if (!double.IsNaN(ob / bb)) Add(fb, k.Param, ob / bb);
            sb.Append(CultureInfo.InvariantCulture,
                $"| {k.Case} | {HalfName(k.Param)} | {F(bf)} | {F(of)} | {R(of / bf)} | {F(bb)} | {F(ob)} | {R(ob / bb)} |\n");
        }
        sb.AppendLine();
        foreach (var dtype in fwd.Keys.Where(fb.ContainsKey))
        {
            sb.Append(CultureInfo.InvariantCulture,
                $"{HalfName(dtype)}: median ratio to the built-in: forward {R(Median(fwd[dtype]))}, forward+backward {R(Median(fb[dtype]))}; " +
                $"worst: forward {R(fwd[dtype].Max())}, forward+backward {R(fb[dtype].Max())} ({fwd[dtype].Count} shapes).\n");
        }
        Emit(summary, console, sb.ToString(), "half-table.md");

        static string HalfName(object dtype) => (ScalarType)dtype == ScalarType.BFloat16 ? "bf16" : "f16";

        static void Add(Dictionary<object, List<double>> d, object key, double value)
        {
            if (!d.TryGetValue(key, out var list)) d[key] = list = new List<double>();
            list.Add(value);
        }
    }

    /// <summary>Median ms of every successful report of one class, by shape, one further parameter and method.</summary>
    private static Dictionary<(BenchCase Case, object Param, string Method), double> Medians(Summary summary, System.Type type, string parameter)
    {
        var medians = new Dictionary<(BenchCase, object, string), double>();
        foreach (var report in summary.Reports)
        {
            if (report.ResultStatistics is null) continue;
            var bc = report.BenchmarkCase;
            if (bc.Descriptor.Type != type || bc.Parameters["Case"] is not BenchCase c) continue;
            medians[(c, bc.Parameters[parameter], bc.Descriptor.WorkloadMethod.Name)] = report.ResultStatistics.Median / 1e6; // ns → ms
        }
        return medians;
    }

    private static void Emit(Summary summary, TextWriter console, string text, string file)
    {
        console.WriteLine();
        console.WriteLine(text);
        var path = Path.GetFullPath(Path.Combine(summary.ResultsDirectoryPath, "..", file));
        File.WriteAllText(path, text);
        console.WriteLine($"Table written to {path}");
    }

    private static double Median(List<double> values)
    {
        var sorted = values.OrderBy(v => v).ToList();
        int n = sorted.Count;
        return n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
    }

    private static string F(double ms) => double.IsNaN(ms) ? "–" : ms.ToString(ms < 1 ? "0.000" : "0.00", CultureInfo.InvariantCulture);

    private static string R(double ratio) => double.IsNaN(ratio) ? "–" : ratio.ToString("0.00", CultureInfo.InvariantCulture) + "×";

    private static string G(double bytes, double ms) => double.IsNaN(ms) ? "–" : (bytes / (ms * 1e6)).ToString("0.0", CultureInfo.InvariantCulture);
}
