using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Parity;

/// <summary>
/// GroupNorm with a fused activation (ours, module and functional, on both kernel families) against
/// libtorch's group_norm followed by libtorch's own silu or relu: y, dx, dweight and dbias, in all four
/// floating dtypes, ranks 2–5, contiguous and channels_last, with and without affine parameters; and
/// half inputs with float32 parameters (mixed precision).
/// </summary>
[TestFixture]
public sealed class ActivationParityTests
{
    private const double Eps = 1e-5;

    /// <summary>
    /// Each rank in each layout it has, each with and without affine parameters somewhere, both entry
    /// points spread over them; bias-only (the oracle's all-ones weight) and weight-only through the
    /// functional form, the only one that takes them.
    /// </summary>
    private static readonly (ParityCase Case, Api Api)[] s_cases =
    {
        (new(new long[] { 8, 24 }, 3), Api.Functional),
        (new(new long[] { 4, 6 }, 2, Affine.None), Api.Module),
        (new(new long[] { 2, 6, 9 }, 3, Affine.None), Api.Functional),
        (new(new long[] { 2, 6, 9 }, 2), Api.Module),
        (new(new long[] { 2, 8, 5, 7 }, 4), Api.Functional),
        (new(new long[] { 2, 8, 5, 7 }, 4, Layout: Layout.ChannelsLast), Api.Module),
        (new(new long[] { 2, 8, 5, 7 }, 2, Affine.None, Layout.ChannelsLast), Api.Functional),
        (new(new long[] { 2, 6, 3, 4, 5 }, 3, Affine.None), Api.Module),
        (new(new long[] { 2, 6, 3, 4, 5 }, 3, Layout: Layout.ChannelsLast), Api.Functional),
        (new(new long[] { 1, 6, 3, 4, 5 }, 6, Affine.None, Layout.ChannelsLast), Api.Module),
        (new(new long[] { 2, 6, 3, 4, 5 }, 2, Affine.BiasOnly), Api.Functional),
        (new(new long[] { 2, 6, 9 }, 3, Affine.WeightOnly), Api.Functional),
        // Planes of whole vector pairs (8×8, 16): the fused forward's one-loop-per-row path for small planes.
        (new(new long[] { 2, 8, 8, 8 }, 4), Api.Functional),
        (new(new long[] { 3, 6, 16 }, 3, Affine.None), Api.Module),
        // One sample of large rows: split into blocks on more than one thread, not aligned to planes.
        (new(new long[] { 1, 4, 96, 96 }, 2), Api.Functional),
    };

    private static readonly ScalarType[] s_dtypes = { ScalarType.Float32, ScalarType.Float64, ScalarType.Float16, ScalarType.BFloat16 };
    private static readonly Activation[] s_activations = Oracle.FusedActivations;
    private static readonly KernelPath[] s_paths = { KernelPath.Default, KernelPath.Generic };

    public static IEnumerable<TestCaseData> Cases()
    {
        foreach (var activation in s_activations)
            foreach (var dtype in s_dtypes)
                foreach (var path in s_paths)
                    foreach (var (c, api) in s_cases)
                        yield return new TestCaseData(c, api, dtype, path, activation)
                            .SetArgDisplayNames($"{activation}_{path}_{ParityTests.DtypeName(dtype)}_{api}_{c.Name}");
    }

    [TestCaseSource(nameof(Cases))]
    public void MatchesNativeGroupNormThenActivation(ParityCase c, Api api, ScalarType dtype, KernelPath path, Activation activation) =>
        Check(c, api, dtype, dtype, path, activation);

    public static IEnumerable<TestCaseData> ForcedSplitCases()
    {
        foreach (var activation in s_activations)
            foreach (var dtype in new[] { ScalarType.Float32, ScalarType.Float64 })
                foreach (bool openMp in new[] { true, false })
                    foreach (var (c, api) in s_cases)
                        yield return new TestCaseData(c, api, dtype, openMp, activation)
                            .SetArgDisplayNames($"{activation}_{(openMp ? "OpenMP" : "OwnThreads")}_{ParityTests.DtypeName(dtype)}_{api}_{c.Name}");
    }

    /// <summary>
    /// The same checks with every row forced into blocks on 3 threads, on both backends: the activation's
    /// terms in the block sums of backward, and the split forward of both the graph and the no-graph routes.
    /// </summary>
    [TestCaseSource(nameof(ForcedSplitCases))]
    public void MatchesNativeThenActivationWithRowsSplit(ParityCase c, Api api, ScalarType dtype, bool openMp, Activation activation)
    {
        StrategyParityTests.RequireBackend(openMp);
        var config = new StrategyParityTests.Config(openMp, Split: true, Threads: 3);
        using var forced = config.Force();
        Check(c, api, dtype, dtype, KernelPath.Default, activation);
        StrategyParityTests.AssertPlans(forced.Plans, 3, config, "forward, backward and the no-graph forward");
    }

    public static IEnumerable<TestCaseData> MixedCases()
    {
        var cases = new (ParityCase Case, Api Api)[]
        {
            (new(new long[] { 2, 8, 5, 7 }, 4, Layout: Layout.ChannelsLast), Api.Functional),
            (new(new long[] { 2, 6, 9 }, 3), Api.Module),
            (new(new long[] { 2, 6, 3, 4, 5 }, 3, Affine.BiasOnly), Api.Functional),
        };
        foreach (var activation in Oracle.AllActivations)
            foreach (var dtype in new[] { ScalarType.Float16, ScalarType.BFloat16 })
                foreach (var path in s_paths)
                    foreach (var (c, api) in cases)
                        yield return new TestCaseData(c, api, dtype, path, activation)
                            .SetArgDisplayNames($"{activation}_{path}_{ParityTests.DtypeName(dtype)}_{api}_{c.Name}");
    }

    /// <summary>
    /// A float16/bfloat16 input with float32 weight and bias, as PyTorch allows on CPU: the output and dx
    /// keep the input's dtype, dweight and dbias come back in float32. libtorch's group_norm takes the
    /// same mixed arguments, so the built-in composite is the comparison, as for plain half inputs.
    /// </summary>
    [TestCaseSource(nameof(MixedCases))]
    public void MixedPrecisionMatchesNativeWithTheSameArguments(ParityCase c, Api api, ScalarType dtype, KernelPath path, Activation activation) =>
        Check(c, api, dtype, ScalarType.Float32, path, activation);

    private static void Check(ParityCase c, Api api, ScalarType dtype, ScalarType parameterType, KernelPath path, Activation activation)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(c.Name.Length * 37 + c.Shape.Sum(s => (int)s) + (int)activation);
        bool half = dtype is ScalarType.Float16 or ScalarType.BFloat16;
        // Half values are drawn in float32 and rounded once, so that the float64 reference sees exactly them.
        var x = TestTensors.Input(c.Shape, c.Layout, half ? ScalarType.Float32 : dtype, torch.CPU).to(dtype);
        var dy = torch.randn(c.Shape, half ? ScalarType.Float32 : dtype).to(dtype);
        var (w, b) = TestTensors.Parameters(c.Affine, c.Shape[1], parameterType, torch.CPU);
        if (c.Layout == Layout.ChannelsLast)
            Assert.That(TestTensors.IsChannelsLast(x) && !x.is_contiguous(), Is.True, "the case must build a channels_last input");

        var actual = Oracle.Ours(path, x, c.Groups, w, b, Eps, dy, activation, api);
        GroupNormResult inferred;
        using (torch.no_grad())
            inferred = Oracle.Ours(path, x, c.Groups, w, b, Eps, null, activation, api);
        string label = $"CPU {activation}{(parameterType != dtype ? " mixed" : "")}";

        double inferenceTolerance;
        if (half)
        {
            var builtIn = Oracle.Native(x, c.Groups, w, b, Eps, dy, activation);
            var reference = Oracle.Native(x.to(ScalarType.Float64), c.Groups, w?.to(ScalarType.Float64), b?.to(ScalarType.Float64), Eps,
                dy.to(ScalarType.Float64), activation);
            AssertNoWorseThanBuiltIn(actual, builtIn, reference, dtype, parameterType, label, path);
            inferenceTolerance = HalfUnitRoundoff(dtype);
        }
        else
        {
            var expected = Oracle.Native(x, c.Groups, w, b, Eps, dy, activation);
            inferenceTolerance = dtype == ScalarType.Float64 ? ParityCheck.Float64Tolerance : ParityCheck.Float32Tolerance;
            ParityCheck.AssertClose(actual, expected, inferenceTolerance, label, path, dtype);
        }

        Assert.Multiple(() =>
        {
            // The no-graph route runs its own forward; it must apply the same activation.
            Assert.That(TestTensors.RelativeError(inferred.Y, actual.Y), Is.LessThanOrEqualTo(inferenceTolerance), "y under no_grad vs y with a graph");
            Assert.That(actual.Y.dtype, Is.EqualTo(dtype), "y dtype");
            Assert.That(inferred.Y.dtype, Is.EqualTo(dtype), "y dtype under no_grad");
            Assert.That(actual.Dx!.dtype, Is.EqualTo(dtype), "dx dtype");
            if (actual.Dweight is not null) Assert.That(actual.Dweight.dtype, Is.EqualTo(parameterType), "dweight dtype");
            if (actual.Dbias is not null) Assert.That(actual.Dbias.dtype, Is.EqualTo(parameterType), "dbias dtype");
            if (c.Layout == Layout.ChannelsLast)
            {
                Assert.That(TestTensors.IsChannelsLast(actual.Y), Is.True, "y lost the channels_last format");
                Assert.That(TestTensors.IsChannelsLast(inferred.Y), Is.True, "y under no_grad lost the channels_last format");
                Assert.That(TestTensors.IsChannelsLast(actual.Dx!), Is.True, "dx lost the channels_last format");
            }
            else
            {
                Assert.That(actual.Y.is_contiguous(), Is.True, "y of a contiguous input is not contiguous");
            }
        });
    }

    /// <summary>
    /// Half-precision results cannot be compared with a fixed bound against a half-precision oracle: both
    /// sides round. Both are measured against libtorch's composite in float64 on the same (exactly upcast)
    /// values; ours must be within twice the built-in's error, or within two roundings to the dtype where
    /// the built-in happens to be closer than that (ours rounds each output once, from float32).
    /// float32 parameter gradients of a mixed call are computed from exact half inputs, so they must reach
    /// float32 accuracy, whatever the built-in's (its silu backward rounds dz to half first).
    /// </summary>
    private static void AssertNoWorseThanBuiltIn(
        GroupNormResult actual, GroupNormResult builtIn, GroupNormResult reference, ScalarType dtype, ScalarType parameterType, string label, KernelPath path)
    {
        var outputs = new List<(string Name, Tensor? Ours, Tensor? BuiltIn, Tensor? Reference, bool FullPrecision)>
        {
            ("y", actual.Y, builtIn.Y, reference.Y, false),
            ("dx", actual.Dx, builtIn.Dx, reference.Dx, false),
            ("dweight", actual.Dweight, builtIn.Dweight, reference.Dweight, parameterType == ScalarType.Float32),
            ("dbias", actual.Dbias, builtIn.Dbias, reference.Dbias, parameterType == ScalarType.Float32),
        };
        double floor = 2 * HalfUnitRoundoff(dtype);
        var lines = new List<string>();
        Assert.Multiple(() =>
        {
            foreach (var (name, ours, native, exact, fullPrecision) in outputs)
            {
                if (exact is null) continue;
                Assert.That(ours, Is.Not.Null, $"{name} missing");
                double oursError = TestTensors.RelativeError(ours!, exact);
                double nativeError = TestTensors.RelativeError(native!, exact);
                lines.Add(string.Create(CultureInfo.InvariantCulture, $"{name}: ours {oursError:E2}, built-in {nativeError:E2}"));
                ParityReport.Record(label + " vs f64", path, dtype, name, oursError);
                double bound = fullPrecision ? ParityCheck.Float32Tolerance : Math.Max(2 * nativeError, floor);
                Assert.That(oursError, Is.LessThanOrEqualTo(bound),
                    $"{name}: error against float64 (built-in's: {nativeError.ToString("E2", CultureInfo.InvariantCulture)})");
            }
        });
        TestContext.Out.WriteLine(string.Join("  ", lines));
    }

    /// <summary>2^-p for p significant bits: the largest relative error of one rounding to the dtype.</summary>
    internal static double HalfUnitRoundoff(ScalarType dtype) => dtype switch
    {
        ScalarType.BFloat16 => Math.Pow(2, -8),
        ScalarType.Float16 => Math.Pow(2, -11),
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a half-precision dtype"),
    };
}
