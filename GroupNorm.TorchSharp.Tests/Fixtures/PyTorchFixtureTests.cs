using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Text;
using System.Text.Json;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Fixtures;

/// <summary>
/// Checks our GroupNorm against reference values from PyTorch's own group_norm (forward, first
/// derivatives, one double-backward product), read from the committed fixtures.
/// <para>
/// Errors are measured as max|ours − reference| / max|reference| per tensor: relative to the tensor's
/// scale, so that entries that happen to be near zero do not dominate.
/// </para>
/// <para>
/// A float64 fixture's reference agrees with an independent plain-ops formula to 1e-11 or better (the
/// script checks that before writing it), so ours must be within <see cref="Float64Tolerance"/>.
/// Other fixtures hold two references: PyTorch's result in the fixture's dtype, and the float64 answer
/// for the same inputs. Ours must be as close to the float64 answer as the dtype allows, or within twice
/// PyTorch's own error in that dtype where the problem is ill-conditioned for it; and as close to
/// PyTorch's result as both sides' rounding allows.
/// </para>
/// <para>
/// Large-mean fixtures (x = 1e4 + randn) are the exception: PyTorch 1.13's float32 CPU kernels are far
/// off there (for channels_last, 300× the output's scale in y and more in the derivatives), so only the
/// float64 answer counts, and the report prints our error beside PyTorch's.
/// </para>
/// </summary>
[TestFixture]
public sealed class PyTorchFixtureTests
{
    private const double Float64Tolerance = 1e-10;

    // float32 rounding of each side (~1e-7 per operation) accumulated over reductions of a few
    // thousand elements; PyTorch's float32 results sit 1e-7 to 6e-7 from float64 on these fixtures.
    private const double Float32Tolerance = 1e-5;

    // One rounding of an output to the dtype is up to 2^-9 ≈ 2e-3 of max|reference| for bfloat16 (8
    // significant bits) and 2^-12 ≈ 2.4e-4 for float16 (11 bits); as in the parity tests
    // (HalfPrecisionMatchesNativeInFloat32), the limits leave a few roundings of headroom.
    private const double BFloat16Tolerance = 1e-2;
    private const double Float16Tolerance = 2e-3;

    // float32's error in a result before its one rounding to a half type, as a fraction of the tensor's
    // scale: a few roundings of 2^-24 ≈ 6e-8.
    private const double HalfRoundingSlack = 1e-6;

    public static IEnumerable<TestCaseData> FixtureFiles()
    {
        var files = PyTorchFixture.Files();
        if (files.Count == 0)
        {
            // Without this, a missing copy step would leave a parameterized test with no cases: silent.
            yield return new TestCaseData(Path.Combine(PyTorchFixture.Folder, "(none found)")).SetArgDisplayNames("no-fixtures-found");
            yield break;
        }
        foreach (var file in files)
            yield return new TestCaseData(file).SetArgDisplayNames(Path.GetFileNameWithoutExtension(file));
    }

    [Test]
    public void EveryFixtureTheScriptWritesIsInTheTestOutput()
    {
        var folder = PyTorchFixture.Folder;
        Assert.That(Directory.Exists(folder), Is.True,
            $"{folder} is missing: the test project must copy Fixtures/pytorch to its output.");
        var indexPath = Path.Combine(folder, "index.json");
        Assert.That(File.Exists(indexPath), Is.True, $"{indexPath} is missing.");

        using var index = JsonDocument.Parse(File.ReadAllText(indexPath));
        var listed = index.RootElement.GetProperty("files").EnumerateArray().Select(f => f.GetString()!).ToArray();
        var present = PyTorchFixture.Files().Select(Path.GetFileName).ToArray();
        Assert.Multiple(() =>
        {
            Assert.That(index.RootElement.GetProperty("format").GetString(), Is.EqualTo(PyTorchFixture.Format));
            Assert.That(index.RootElement.GetProperty("count").GetInt32(), Is.EqualTo(listed.Length));
            Assert.That(listed, Has.Length.EqualTo(PyTorchFixture.ExpectedCount),
                "tools/pytorch_reference.py wrote a different number of fixtures than PyTorchFixture.ExpectedCount.");
            Assert.That(present, Is.EquivalentTo(listed), "The fixture files in the test output differ from index.json.");
        });
    }

    [TestCaseSource(nameof(FixtureFiles))]
    public void MatchesPyTorch(string path)
    {
        Assert.That(File.Exists(path), Is.True, $"No PyTorch fixture found in {PyTorchFixture.Folder}.");
        using var scope = torch.NewDisposeScope();
        var fx = PyTorchFixture.Read(path);

        var (ours, layoutProblems) = RunOurs(fx);
        var checks = new List<Check>();
        var report = new StringBuilder();
        report.AppendLine(CultureInfo.InvariantCulture,
            $"{fx.Name}: {fx.Dtype}, shape [{string.Join(", ", fx.Shape)}], G={fx.NumGroups}, eps={fx.Eps:R}, " +
            $"{(fx.ChannelsLast ? "channels_last" : "contiguous")}, reference from PyTorch {fx.TorchVersion}");
        report.AppendLine("  output                 ours-vs-ref   ours-vs-f64   torch-vs-f64");

        foreach (var output in ours)
        {
            Assert.That(fx.Has(output.Stored), Is.True, $"{fx.Name}: we produced '{output.Stored}' but the fixture has no reference for it.");
            Assert.That(output.Value.dtype, Is.EqualTo(fx.Dtype), $"{fx.Name}: {output.Label} has the wrong dtype.");
            var reference = fx.Load(output.Stored);
            Assert.That(reference.dtype, Is.EqualTo(fx.Dtype), $"{fx.Name}: the fixture stores {output.Stored} in the wrong dtype.");
            Assert.That(output.Value.shape, Is.EqualTo(reference.shape), $"{fx.Name}: {output.Label} has the wrong shape.");
            checks.AddRange(Compare(fx, output, reference, report));
        }
        TestContext.Out.Write(report.ToString());

        var expectedOutputs = PyTorchFixture.OutputNames.Where(fx.Has).ToArray();
        Assert.Multiple(() =>
        {
            Assert.That(ours.Select(o => o.Stored).Distinct(), Is.EquivalentTo(expectedOutputs),
                $"{fx.Name}: the outputs we computed differ from those the fixture holds.");
            Assert.That(layoutProblems, Is.Empty, $"{fx.Name}: our outputs do not keep the input's memory layout.");
            foreach (var c in checks)
                Assert.That(c.Error, Is.LessThanOrEqualTo(c.Tolerance), $"{fx.Name}: {c.What}");
        });
    }

    private sealed record Check(string What, double Error, double Tolerance);

    /// <summary>One of our results: the fixture tensor it answers, and whether the create_graph path made it.</summary>
    private sealed record Output(string Stored, Tensor Value, bool Differentiable)
    {
        public string Label => Differentiable && Stored is "dx" or "dweight" or "dbias" ? Stored + " (create_graph)" : Stored;
    }

    private static IEnumerable<Check> Compare(PyTorchFixture fx, Output output, Tensor reference, StringBuilder report)
    {
        var (label, stored, ours) = (output.Label, output.Stored, output.Value);
        double vsRef = TestTensors.RelativeError(ours, reference);
        if (fx.Dtype == ScalarType.Float64)
        {
            report.AppendLine(CultureInfo.InvariantCulture, $"  {label,-22} {vsRef,11:E2}");
            yield return new Check($"{label} vs PyTorch float64", vsRef, Float64Tolerance);
            yield break;
        }

        var exact = fx.Load("f64." + stored);
        double vsExact = TestTensors.RelativeError(ours, exact);
        double torchVsExact = TestTensors.RelativeError(reference, exact);
        double tolerance = fx.Dtype switch
        {
            ScalarType.Float32 => Float32Tolerance,
            ScalarType.Float16 => Float16Tolerance,
            _ => BFloat16Tolerance,
        };
        report.AppendLine(CultureInfo.InvariantCulture, $"  {label,-22} {vsRef,11:E2}   {vsExact,11:E2}   {torchVsExact,11:E2}");

        if (fx.LargeMean)
        {
            // Both our paths (fused kernels and the create_graph ops) centre x on a float64-accurate mean,
            // so they keep float32 accuracy where PyTorch's float32 kernel loses 3 to 4 digits.
            yield return new Check($"{label} vs float64 (large mean; PyTorch {fx.Dtype} is {torchVsExact:E2} off)", vsExact, tolerance);
            yield break;
        }
        // Where the problem is ill-conditioned for the dtype (groups of two elements, whose dx is all
        // cancellation), no implementation in that dtype does much better than its rounding allows:
        // PyTorch's own error then sets the bar, with a factor for our different order of operations.
        // Against PyTorch's result, both sides' errors add up.
        yield return new Check($"{label} vs float64", vsExact, Math.Max(tolerance, 2 * torchVsExact));
        yield return new Check($"{label} vs PyTorch {fx.Dtype}", vsRef, tolerance + 3 * torchVsExact);
        // A scale-relative bound cannot tell one rounding from two: truncating instead of rounding costs at
        // most one ulp of the largest element (float16: 2^-10 < 2e-3). Per element, a result computed in
        // float32 and rounded once to nearest is within half an ulp of the exact value, plus float32's own
        // error (measured: at most 1e-8 of the tensor's scale beyond the half ulp, on every output of both
        // half dtypes).
        if (fx.Dtype == ScalarType.Float32) yield break;
        double excess = BeyondHalfAnUlp(ours, exact, fx.Dtype);
        report.AppendLine(CultureInfo.InvariantCulture, $"  {label,-22} beyond half an ulp: {excess:E2}");
        yield return new Check($"{label} vs float64, per element beyond half a {fx.Dtype} ulp", excess, HalfRoundingSlack);
    }

    /// <summary>
    /// max(|ours − exact| − ulp(exact)/2) / max|exact| over elements, with the ulp in <paramref name="dtype"/>
    /// of each exact value (constant below the dtype's normal range): ≤ 0 when
    /// every element is the exact value rounded to nearest.
    /// </summary>
    private static double BeyondHalfAnUlp(Tensor actual, Tensor expected, ScalarType dtype)
    {
        var (fractionBits, minExponent) = dtype switch
        {
            ScalarType.Float16 => (10, -14),
            ScalarType.BFloat16 => (7, -126),
            _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a half-precision dtype"),
        };
        using var scope = torch.NewDisposeScope();
        var a = actual.to(ScalarType.Float64);
        var e = expected.to(ScalarType.Float64);
        var ulp = torch.pow(2.0, e.abs().clamp_min(Math.Pow(2, minExponent)).log2().floor() - fractionBits);
        double beyond = ((a - e).abs() - 0.5 * ulp).max().item<double>();
        double scale = e.abs().max().item<double>();
        if (double.IsNaN(beyond) || double.IsNaN(scale)) return double.PositiveInfinity;
        return scale > 0 ? beyond / scale : beyond;
    }

    /// <summary>
    /// Our outputs for the fixture's inputs, labelled with the fixture tensor they answer. First
    /// derivatives are computed twice: by a plain backward (the fused kernels) and with create_graph
    /// (the differentiable path that also yields ddx and ddweight).
    /// </summary>
    private static (List<Output> Outputs, List<string> LayoutProblems) RunOurs(PyTorchFixture fx)
    {
        var outputs = new List<Output>();
        var problems = new List<string>();
        var dy = fx.LoadInLayout("dy");
        var u = fx.LoadInLayout("u");

        {
            var (x, w, b) = Leaves(fx);
            var y = Functional.group_norm(x, fx.NumGroups, w, b, fx.Eps);
            var grads = torch.autograd.grad(new[] { y }, Differentiable(x, w, b), new[] { dy });
            if (fx.ChannelsLast && !TestTensors.IsChannelsLast(y))
                problems.Add($"y lost the input's channels_last layout: strides [{string.Join(", ", y.stride())}].");
            if (fx.ChannelsLast && !TestTensors.IsChannelsLast(grads[0]))
                problems.Add($"dx lost the input's channels_last layout: strides [{string.Join(", ", grads[0].stride())}].");
            outputs.Add(new Output("y", y.detach(), false));
            AddGradients(outputs, grads, w, b, false);
        }

        {
            var (x, w, b) = Leaves(fx);
            var y = Functional.group_norm(x, fx.NumGroups, w, b, fx.Eps);
            var grads = torch.autograd.grad(new[] { y }, Differentiable(x, w, b), new[] { dy }, retain_graph: true, create_graph: true);
            AddGradients(outputs, grads, w, b, true);
            var product = (grads[0] * u).sum();
            var second = torch.autograd.grad(new[] { product }, w is null ? new[] { x } : new[] { x, w });
            outputs.Add(new Output("ddx", second[0], true));
            if (w is not null) outputs.Add(new Output("ddweight", second[1], true));
        }
        return (outputs, problems);
    }

    private static (Tensor X, Tensor? Weight, Tensor? Bias) Leaves(PyTorchFixture fx) => (
        fx.LoadInLayout("x").requires_grad_(true),
        fx.Has("weight") ? fx.Load("weight").requires_grad_(true) : null,
        fx.Has("bias") ? fx.Load("bias").requires_grad_(true) : null);

    private static Tensor[] Differentiable(Tensor x, Tensor? w, Tensor? b) =>
        new[] { x, w, b }.Where(t => t is not null).Select(t => t!).ToArray();

    private static void AddGradients(List<Output> outputs, IList<Tensor> grads, Tensor? w, Tensor? b, bool createGraph)
    {
        int i = 0;
        outputs.Add(new Output("dx", grads[i++].detach(), createGraph));
        if (w is not null) outputs.Add(new Output("dweight", grads[i++].detach(), createGraph));
        if (b is not null) outputs.Add(new Output("dbias", grads[i].detach(), createGraph));
    }
}
