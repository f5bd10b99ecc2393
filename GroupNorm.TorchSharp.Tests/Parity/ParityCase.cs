using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Parity;

/// <summary>One group_norm configuration of the parity sweep.</summary>
public sealed record ParityCase(long[] Shape, long Groups, Affine Affine = Affine.Both, Layout Layout = Layout.Contiguous)
{
    public string Name =>
        $"{string.Join("x", Shape)}_g{Groups}_{Affine}{(Layout == Layout.Contiguous ? "" : "_" + Layout)}";

    public override string ToString() => Name;

    /// <summary>
    /// The sweep: PyTorch's own test shapes first, then ranks 2–5 with G ∈ {1, a divisor, C}, C from 1
    /// to 256, spatial sizes from 1 to 4096, N ∈ {1, 2, 8} (N = 0 has its own tests), every affine
    /// combination and every layout. Chosen by hand instead of a Cartesian product, so that each axis is
    /// covered without thousands of near-duplicates.
    /// </summary>
    public static IReadOnlyList<ParityCase> Sweep { get; } = new ParityCase[]
    {
        // PyTorch's test_nn / test_module shapes.
        new(new long[] { 1, 2, 3, 4 }, 2),
        new(new long[] { 2, 3, 10 }, 3),
        new(new long[] { 2, 6, 4, 2, 2 }, 3),
        new(new long[] { 1, 256, 1, 1 }, 32),
        new(new long[] { 4, 8, 40, 40 }, 4, Layout: Layout.ChannelsLast),
        new(new long[] { 2, 30, 50, 50 }, 3, Layout: Layout.ChannelsLast),
        new(new long[] { 2, 9, 7, 11, 15 }, 3, Layout: Layout.ChannelsLast),

        // Rank 2. Groups of one or two elements are in DegenerateGroupTests: the answer there is
        // cancellation noise, which a relative-to-the-result error cannot judge.
        new(new long[] { 8, 24 }, 3),
        new(new long[] { 2, 64 }, 16),
        new(new long[] { 1, 3 }, 1),
        new(new long[] { 8, 32 }, 1, Affine.None),
        new(new long[] { 4, 6 }, 2, Affine.BiasOnly),

        // Rank 3.
        new(new long[] { 2, 1, 17 }, 1),
        new(new long[] { 8, 3, 5 }, 3, Affine.WeightOnly),
        new(new long[] { 2, 6, 1 }, 2),
        new(new long[] { 1, 32, 100 }, 8),
        new(new long[] { 2, 256, 9 }, 256),
        new(new long[] { 2, 64, 33 }, 16, Affine.None),

        // Rank 4.
        new(new long[] { 2, 6, 5, 7 }, 1),
        new(new long[] { 2, 6, 5, 7 }, 2, Affine.BiasOnly),
        new(new long[] { 2, 6, 5, 7 }, 6, Affine.WeightOnly),
        new(new long[] { 1, 64, 16, 16 }, 32),
        new(new long[] { 8, 32, 3, 3 }, 4, Affine.None),
        new(new long[] { 2, 3, 1, 5 }, 3),
        new(new long[] { 1, 1, 8, 8 }, 1),
        new(new long[] { 2, 256, 8, 8 }, 32),
        new(new long[] { 1, 64, 64, 64 }, 8),
        new(new long[] { 8, 3, 2, 2 }, 1, Affine.None),

        // Rank 5.
        new(new long[] { 2, 6, 3, 4, 5 }, 3),
        new(new long[] { 1, 32, 4, 4, 4 }, 32, Affine.BiasOnly),
        new(new long[] { 2, 3, 2, 2, 2 }, 1, Affine.WeightOnly),
        new(new long[] { 1, 64, 8, 8, 8 }, 4),

        // channels_last, 4-d and 5-d, small and with G = C and G = 1.
        new(new long[] { 2, 6, 5, 7 }, 3, Layout: Layout.ChannelsLast),
        new(new long[] { 1, 64, 8, 8 }, 64, Affine.None, Layout.ChannelsLast),
        new(new long[] { 8, 3, 4, 4 }, 1, Affine.BiasOnly, Layout.ChannelsLast),
        new(new long[] { 2, 6, 3, 4, 5 }, 2, Affine.WeightOnly, Layout.ChannelsLast),
        new(new long[] { 2, 256, 4, 4 }, 32, Layout: Layout.ChannelsLast),

        // Neither dense layout: kernels must not assume strides.
        new(new long[] { 8, 24 }, 3, Layout: Layout.Transposed),
        new(new long[] { 2, 6, 5 }, 2, Affine.None, Layout.Transposed),
        new(new long[] { 2, 6, 5, 7 }, 3, Layout: Layout.Transposed),
        new(new long[] { 2, 6, 3, 4, 5 }, 3, Affine.BiasOnly, Layout.Transposed),
        new(new long[] { 4, 6 }, 2, Layout: Layout.Sliced),
        new(new long[] { 2, 32, 7 }, 8, Affine.WeightOnly, Layout.Sliced),
        new(new long[] { 2, 8, 5, 6 }, 4, Layout: Layout.Sliced),
    };
}

/// <summary>
/// The largest ours-vs-oracle error seen per (path, dtype, output) over a run, printed when the run ends
/// so that a log shows how much headroom the tolerances have.
/// </summary>
internal static class ParityReport
{
    private static readonly ConcurrentDictionary<string, double> s_max = new();

    public static void Record(string device, KernelPath path, ScalarType dtype, string output, double error) =>
        s_max.AddOrUpdate($"{device} {path} {dtype} {output}", error, (_, old) => double.IsNaN(error) || error > old ? error : old);

    public static string Summary() =>
        string.Join("\n", s_max.OrderBy(p => p.Key, System.StringComparer.Ordinal)
            .Select(p => string.Create(CultureInfo.InvariantCulture, $"  max parity error {p.Key,-36} {p.Value:E2}")));

    public static void WriteSummary()
    {
        if (s_max.IsEmpty) return;
        var text = "Parity with libtorch's group_norm (max over cases, relative to max|reference|):\n" + Summary();
        TestContext.Progress.WriteLine(text);
        File.WriteAllText(Path.Combine(TestContext.CurrentContext.WorkDirectory, "parity-errors.txt"), text + "\n");
    }
}

[SetUpFixture]
public sealed class ParityReportWriter
{
    [OneTimeTearDown]
    public void PrintMaxima() => ParityReport.WriteSummary();
}
