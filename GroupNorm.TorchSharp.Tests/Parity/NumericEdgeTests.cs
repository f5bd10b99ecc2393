using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using GroupNormalization.Kernels;
using GroupNormalization.Kernels.Cpu;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Parity;

/// <summary>Which groups of an eps = 0 input hold a single repeated value.</summary>
public enum ConstantGroups
{
    Every,

    /// <summary>Every other (n, g) group; the rest are random, so both kinds meet in one call.</summary>
    Some,
}

/// <summary>
/// Inputs at the edges of floating point, each against libtorch's native group_norm: eps = 0 on constant
/// groups (σ² = 0, so r = 1/√0 = ∞ and 0·∞ appears), NaN and ±∞ in x or dy, and empty spatial dimensions.
/// Non-finite results are compared by kind (NaN, +∞, −∞ entry by entry, see <see cref="AssertSameValues"/>),
/// finite ones to the parity tolerance.
/// </summary>
[TestFixture]
public sealed class NumericEdgeTests
{
    private const double Eps = 1e-5;

    /// <summary>Two samples, three groups of two channels: six (n, g) groups of 70 elements.</summary>
    private static readonly long[] Small = { 2, 6, 5, 7 };

    /// <summary>
    /// Three groups of 32,768 elements in one sample, run with split rows forced (<see cref="KernelOverride"/>):
    /// each row is cut into blocks (channels-first) or the sample into ranges of positions (channels-last),
    /// whose partial moments and sums are merged, so a non-finite value must survive the merge. Left to
    /// itself the plan would split only on a machine with two or more threads.
    /// </summary>
    private static readonly long[] Split = { 1, 6, 128, 128 };

    private const long Groups = 3;

    private static readonly ScalarType[] Dtypes = { ScalarType.Float32, ScalarType.Float64 };
    private static readonly KernelPath[] Paths = { KernelPath.Default, KernelPath.Generic };
    private static readonly Layout[] Layouts = { Layout.Contiguous, Layout.ChannelsLast };

    // ---- eps = 0 ---------------------------------------------------------------------------------------

    public static IEnumerable<TestCaseData> ZeroEpsCases()
    {
        foreach (var path in Paths)
            foreach (var dtype in Dtypes)
                foreach (var layout in Layouts)
                    foreach (var constant in new[] { ConstantGroups.Every, ConstantGroups.Some })
                        yield return new TestCaseData(path, dtype, layout, constant)
                            .SetArgDisplayNames($"{path}_{ParityTests.DtypeName(dtype)}_{layout}_{constant}");
    }

    /// <summary>
    /// eps = 0 is accepted, as PyTorch accepts it. A constant group then has σ² = 0 exactly and r = ∞: its
    /// y and dx are NaN (0·∞), as libtorch's; the other groups are ordinary. The constants are not powers
    /// of two (0.1, −3.7, 1e3 …), so a rounded mean would leave a tiny variance and finite garbage instead.
    /// <para>
    /// Two differences from libtorch are accepted, both where libtorch multiplies its own rounding error
    /// by r = ∞, i.e. where its answer depends on that rounding rather than on the values:
    /// (1) libtorch's channels_last kernel takes σ² as E[x²] − μ², which for these constants comes out a
    /// tiny positive number, and returns finite y and dx for groups its contiguous kernel returns NaN for;
    /// the reference for both layouts is therefore libtorch on the same values in contiguous memory (the
    /// values, not their layout, decide PyTorch's answer). (2) libtorch's dweight of a constant group's
    /// channel is (Σ dy·x − μ·Σ dy)·r, whose bracket is rounding noise of either sign, giving −∞ or +∞ where
    /// ours, from the centred Σ dy·(x − μ) = 0 exactly, gives 0·∞ = NaN; so where libtorch's dweight is ±∞,
    /// ours must be NaN or that same infinity.
    /// </para>
    /// </summary>
    [TestCaseSource(nameof(ZeroEpsCases))]
    public void ZeroEpsOnConstantGroupsMatchesNative(KernelPath path, ScalarType dtype, Layout layout, ConstantGroups constant)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(21);
        var x = torch.randn(Small, dtype);
        var values = new[] { 0.1, -3.7, 1e3, 0.0, 2.3, -0.7 };
        long d = Small[1] / Groups;
        var constantRows = new List<(long N, long G)>();
        for (long n = 0; n < Small[0]; n++)
        {
            for (long g = 0; g < Groups; g++)
            {
                long row = n * Groups + g;
                if (constant == ConstantGroups.Some && row % 2 == 1) continue;
                x[n, TensorIndex.Slice(g * d, (g + 1) * d)] = torch.tensor(values[row % values.Length], dtype);
                constantRows.Add((n, g));
            }
        }
        if (layout == Layout.ChannelsLast) x = TestTensors.ToChannelsLast(x);
        var (w, b) = TestTensors.Parameters(Affine.Both, Small[1], dtype, torch.CPU);
        var dy = torch.randn(Small, dtype);

        var expected = Oracle.Native(x.contiguous(), Groups, w, b, 0.0, dy);
        var actual = Oracle.Ours(path, x, Groups, w, b, 0.0, dy);

        AssertSameValues(actual, expected, dtype, nanForInfiniteDweight: true);
        // Independently of libtorch: what a constant group must give with eps = 0.
        Assert.Multiple(() =>
        {
            foreach (var (n, g) in constantRows)
            {
                Assert.That(GroupBlock(actual.Y, n, g, d).isnan().all().item<bool>(), Is.True, $"y of constant group ({n}, {g}) is not all NaN");
                Assert.That(GroupBlock(actual.Dx!, n, g, d).isnan().all().item<bool>(), Is.True, $"dx of constant group ({n}, {g}) is not all NaN");
            }
            Assert.That(actual.Dbias!.isfinite().all().item<bool>(), Is.True, "dbias = Σ dy does not depend on r and must stay finite");
        });
    }

    /// <summary>eps = 0 on ordinary data: no special case, the parity tolerance applies.</summary>
    [Test]
    public void ZeroEpsOnOrdinaryDataMatchesNative([ValueSource(nameof(Paths))] KernelPath path, [ValueSource(nameof(Dtypes))] ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(22);
        var x = torch.randn(Small, dtype);
        var (w, b) = TestTensors.Parameters(Affine.Both, Small[1], dtype, torch.CPU);
        var dy = torch.randn(Small, dtype);
        AssertSameValues(Oracle.Ours(path, x, Groups, w, b, 0.0, dy), Oracle.Native(x, Groups, w, b, 0.0, dy), dtype, requireFinite: true);
    }

    // ---- NaN and ±∞ --------------------------------------------------------------------------------------

    public static IEnumerable<TestCaseData> PoisonedInputCases()
    {
        foreach (var path in Paths)
            foreach (var dtype in Dtypes)
                foreach (var layout in Layouts)
                    foreach (var activation in Oracle.AllActivations)
                        foreach (var poison in new[] { double.NaN, double.PositiveInfinity, double.NegativeInfinity })
                            yield return Case(Small, path, dtype, layout, activation, poison);
        // Split rows: the fused path only (the generic one does not split).
        foreach (var dtype in Dtypes)
            foreach (var layout in Layouts)
                foreach (var poison in new[] { double.NaN, double.PositiveInfinity })
                    yield return Case(Split, KernelPath.Default, dtype, layout, Activation.None, poison);

        static TestCaseData Case(long[] shape, KernelPath path, ScalarType dtype, Layout layout, Activation activation, double poison) =>
            new TestCaseData(shape, path, dtype, layout, activation, poison).SetArgDisplayNames(
                $"{path}_{ParityTests.DtypeName(dtype)}_{string.Join("x", shape)}_{layout}_{activation}_{PythonText.Repr(poison)}");
    }

    /// <summary>
    /// One NaN, +∞ or −∞ in x poisons its own (n, g) group, as in libtorch: μ (or σ², for ∞ − ∞) is NaN, so
    /// that group's y and dx are NaN, and so is dweight of its channels (Σ over samples). The other groups'
    /// y and dx, the other channels' dweight, and dbias (Σ dy, unless the activation's gradient reads the
    /// poisoned pre-activation) keep their values.
    /// </summary>
    [TestCaseSource(nameof(PoisonedInputCases))]
    public void NonFiniteInputPoisonsOnlyItsGroup(long[] shape, KernelPath path, ScalarType dtype, Layout layout, Activation activation, double poison)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(23);
        var x = torch.randn(shape, dtype);
        long d = shape[1] / Groups;
        long n = shape[0] - 1, g = 1;
        // A position in the middle of the group, away from the first piece the shift is taken from.
        x[n, g * d + 1, shape[2] / 2, shape[3] - 2] = torch.tensor(poison, dtype);
        if (layout == Layout.ChannelsLast) x = TestTensors.ToChannelsLast(x);
        var (w, b) = TestTensors.Parameters(Affine.Both, shape[1], dtype, torch.CPU);
        var dy = torch.randn(shape, dtype);

        var expected = Oracle.Native(x, Groups, w, b, Eps, dy, activation);
        GroupNormResult actual;
        Tensor inference;
        using (var split = shape.SequenceEqual(Split) ? KernelOverride.Force(strategy: RowStrategy.SplitRows) : null)
        {
            actual = Oracle.Ours(path, x, Groups, w, b, Eps, dy, activation);
            inference = InferOurs(path, x, w, b, activation);
            if (split is not null)
            {
                Assert.That(split.Plans, Has.Count.EqualTo(3), "forward, backward and inference plans under the forced split");
                Assert.That(split.Plans.Select(p => p.Blocks), Is.All.GreaterThanOrEqualTo(3), "blocks per row of each plan");
            }
        }

        AssertSameValues(actual, expected, dtype);
        AssertOnlyGroupNonFinite(actual.Y, n, g, d, "y");
        AssertOnlyGroupNonFinite(actual.Dx!, n, g, d, "dx");
        AssertSameKinds(inference, actual.Y, "y under no_grad vs y with a graph");
    }

    public static IEnumerable<TestCaseData> PoisonedGradientCases()
    {
        foreach (var path in Paths)
            foreach (var dtype in Dtypes)
                foreach (var layout in Layouts)
                    foreach (var activation in Oracle.AllActivations)
                        yield return new TestCaseData(path, dtype, layout, activation)
                            .SetArgDisplayNames($"{path}_{ParityTests.DtypeName(dtype)}_{layout}_{activation}");
    }

    /// <summary>
    /// NaN in dy: one where the pre-activation z is positive (group (0, 0)) and one where it is negative
    /// (group (1, 2)). A NaN that reaches dz poisons its (n, g) group's dx and its channel's dweight and
    /// dbias; ReLU's gradient is 0 where z ≤ 0 whatever dy is, as libtorch's threshold_backward, so there
    /// the NaN is dropped and group (1, 2) stays finite.
    /// </summary>
    [TestCaseSource(nameof(PoisonedGradientCases))]
    public void NaNInOutputGradientMatchesNative(KernelPath path, ScalarType dtype, Layout layout, Activation activation)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(24);
        var x = torch.randn(Small, dtype);
        var (w, b) = TestTensors.Parameters(Affine.Both, Small[1], dtype, torch.CPU);
        var z = Oracle.Native(x, Groups, w, b, Eps, null).Y;
        var dy = torch.randn(Small, dtype);
        long d = Small[1] / Groups;
        var positive = FirstIndexIn(z, 0, 0, d, positive: true);
        var negative = FirstIndexIn(z, 1, 2, d, positive: false);
        dy[positive] = torch.tensor(double.NaN, dtype);
        dy[negative] = torch.tensor(double.NaN, dtype);
        if (layout == Layout.ChannelsLast)
        {
            x = TestTensors.ToChannelsLast(x);
            dy = TestTensors.ToChannelsLast(dy);
        }

        var expected = Oracle.Native(x, Groups, w, b, Eps, dy, activation);
        var actual = Oracle.Ours(path, x, Groups, w, b, Eps, dy, activation);

        AssertSameValues(actual, expected, dtype);
        Assert.Multiple(() =>
        {
            Assert.That(actual.Y.isfinite().all().item<bool>(), Is.True, "y does not depend on dy");
            Assert.That(GroupBlock(actual.Dx!, 0, 0, d).isnan().all().item<bool>(), Is.True, "dx of group (0, 0), NaN in dy where z > 0");
            bool dropped = activation == Activation.ReLU;
            Assert.That(GroupBlock(actual.Dx!, 1, 2, d).isfinite().all().item<bool>(), Is.EqualTo(dropped),
                $"dx of group (1, 2), NaN in dy where z < 0, is finite (expected only with ReLU)");
        });
    }

    // ---- empty spatial dimensions ------------------------------------------------------------------------

    public static IEnumerable<TestCaseData> EmptySpatialCases()
    {
        var shapes = new (long[] Shape, Layout Layout)[]
        {
            (new long[] { 2, 4, 0, 3 }, Layout.Contiguous),
            (new long[] { 2, 4, 0, 3 }, Layout.ChannelsLast),
            (new long[] { 2, 4, 0 }, Layout.Contiguous),
            (new long[] { 2, 4, 3, 0, 2 }, Layout.Contiguous),
            (new long[] { 2, 4, 3, 0, 2 }, Layout.ChannelsLast),
        };
        foreach (var path in Paths)
            foreach (var activation in new[] { Activation.None, Activation.SiLU })
                foreach (var (shape, layout) in shapes)
                    yield return new TestCaseData(shape, layout, path, activation)
                        .SetArgDisplayNames($"{path}_{string.Join("x", shape)}_{layout}_{activation}");
    }

    /// <summary>
    /// N > 0 with an empty spatial dimension, which libtorch accepts: an empty output of the input's shape
    /// and dtype, an empty dx, also under no_grad (the fused path's inference route). dbias is a sum over
    /// nothing, 0. dweight is NaN, as libtorch's: it is Σ_n r·Σ dy·(x − μ), and an empty group's r is
    /// 1/√(0/0); a zero there would be just as defensible, but PyTorch's number is the contract.
    /// </summary>
    [TestCaseSource(nameof(EmptySpatialCases))]
    public void EmptySpatialDimensionGivesEmptyOutputLikeNative(long[] shape, Layout layout, KernelPath path, Activation activation)
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(shape);
        var dy = torch.randn(shape);
        if (layout == Layout.ChannelsLast)
        {
            x = TestTensors.ToChannelsLast(x);
            dy = TestTensors.ToChannelsLast(dy);
        }
        var (w, b) = TestTensors.Parameters(Affine.Both, shape[1], ScalarType.Float32, torch.CPU);

        var expected = Oracle.Native(x, 2, w, b, Eps, dy, activation);
        var actual = Oracle.Ours(path, x, 2, w, b, Eps, dy, activation);
        var inference = InferOurs(path, x, w, b, activation, groups: 2);

        Assert.Multiple(() =>
        {
            AssertSameKinds(actual.Dweight!, expected.Dweight!, "dweight");
            foreach (var (name, ours, native) in new[] { ("y", actual.Y, expected.Y), ("dx", actual.Dx!, expected.Dx!), ("y under no_grad", inference, expected.Y) })
            {
                Assert.That(ours.shape, Is.EqualTo(native.shape), $"{name}: shape against libtorch");
                Assert.That(ours.shape, Is.EqualTo(shape), $"{name}: shape against the input's");
                Assert.That(ours.dtype, Is.EqualTo(native.dtype), $"{name}: dtype against libtorch");
            }
            Assert.That(actual.Dweight!.shape, Is.EqualTo(new[] { shape[1] }), "dweight shape");
            Assert.That(actual.Dbias!.shape, Is.EqualTo(new[] { shape[1] }), "dbias shape");
            Assert.That(actual.Dweight!.isnan().all().item<bool>(), Is.True,
                $"dweight: ours [{Values(actual.Dweight!)}], libtorch's [{Values(expected.Dweight!)}]; all NaN expected");
            Assert.That(TestTensors.Identical(actual.Dbias!, expected.Dbias!), Is.True,
                $"dbias: ours [{Values(actual.Dbias!)}], libtorch's [{Values(expected.Dbias!)}]");
            Assert.That(actual.Dbias!.count_nonzero().item<long>(), Is.Zero, "dbias is a sum over no elements");
        });
    }

    // ---- helpers -------------------------------------------------------------------------------------------

    private static Tensor InferOurs(KernelPath path, Tensor x, Tensor? w, Tensor? b, Activation activation, long groups = Groups)
    {
        using var noGrad = torch.no_grad();
        return Oracle.Ours(path, x, groups, w, b, Eps, null, activation).Y;
    }

    /// <summary>Elements of group (n, g): sample n, channels [g·d, (g + 1)·d).</summary>
    private static Tensor GroupBlock(Tensor t, long n, long g, long d) => t[n, TensorIndex.Slice(g * d, (g + 1) * d)];

    /// <summary>The index of the first element of group (n, g) of z that is positive (or negative).</summary>
    private static TensorIndex[] FirstIndexIn(Tensor z, long n, long g, long d, bool positive)
    {
        var block = GroupBlock(z, n, g, d).contiguous();
        var mask = positive ? block.gt(0) : block.lt(0);
        long flat = mask.flatten().nonzero()[0, 0].item<long>();
        long plane = z.shape[2] * z.shape[3];
        return new[]
        {
            TensorIndex.Single(n), TensorIndex.Single(g * d + flat / plane),
            TensorIndex.Single(flat % plane / z.shape[3]), TensorIndex.Single(flat % z.shape[3]),
        };
    }

    private static string Values(Tensor t) =>
        string.Join(", ", t.to(ScalarType.Float64).data<double>().ToArray().Select(v => v.ToString("G4", CultureInfo.InvariantCulture)));

    /// <summary>Every non-finite entry of <paramref name="t"/> is in group (n, g), and all of that group is NaN.</summary>
    private static void AssertOnlyGroupNonFinite(Tensor t, long n, long g, long d, string name)
    {
        var expectedMask = torch.zeros(t.shape, ScalarType.Bool);
        expectedMask[n, TensorIndex.Slice(g * d, (g + 1) * d)] = torch.tensor(true);
        var nonFinite = t.isfinite().logical_not();
        long misplaced = nonFinite.logical_xor(expectedMask).count_nonzero().item<long>();
        Assert.That(misplaced, Is.Zero, $"{name}: entries whose finiteness differs from 'exactly group ({n}, {g}) is poisoned'");
        Assert.That(GroupBlock(t, n, g, d).isnan().all().item<bool>(), Is.True, $"{name}: group ({n}, {g}) is poisoned, but not all NaN");
    }

    /// <summary>
    /// y, dx, dweight and dbias against libtorch's: the same kind (NaN, +∞, −∞, finite) entry by entry, and
    /// the parity tolerance on the entries finite in both, relative to the largest finite expected entry.
    /// </summary>
    private static void AssertSameValues(GroupNormResult actual, GroupNormResult expected, ScalarType dtype, bool requireFinite = false,
        bool nanForInfiniteDweight = false)
    {
        double tolerance = dtype == ScalarType.Float64 ? ParityCheck.Float64Tolerance : ParityCheck.Float32Tolerance;
        var pairs = new (string Name, Tensor Actual, Tensor Expected)[]
        {
            ("y", actual.Y, expected.Y), ("dx", actual.Dx!, expected.Dx!),
            ("dweight", actual.Dweight!, expected.Dweight!), ("dbias", actual.Dbias!, expected.Dbias!),
        };
        Assert.Multiple(() =>
        {
            foreach (var (name, a, e) in pairs)
            {
                if (requireFinite)
                    Assert.That(e.isfinite().all().item<bool>(), Is.True, $"{name}: libtorch's result is not finite");
                AssertSameKinds(a, e, name, nanForInfinity: nanForInfiniteDweight && name == "dweight");
                double error = FiniteRelativeError(a, e);
                TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{name}: {error:E2} on the finite entries"));
                Assert.That(error, Is.LessThanOrEqualTo(tolerance), $"{name}: relative error against libtorch on the entries finite in both");
            }
        });
    }

    /// <summary>
    /// NaN where <paramref name="expected"/> has NaN, +∞ and −∞ where it has them, finite elsewhere; with
    /// <paramref name="nanForInfinity"/>, NaN is also accepted where expected is ±∞.
    /// </summary>
    private static void AssertSameKinds(Tensor actual, Tensor expected, string name, bool nanForInfinity = false)
    {
        Assert.That(actual.shape, Is.EqualTo(expected.shape), $"{name}: shape");
        var kindA = Kinds(actual);
        var kindE = Kinds(expected);
        var differs = kindA.ne(kindE);
        if (nanForInfinity) differs = differs.logical_and(kindA.eq(1).logical_and(kindE.ge(2)).logical_not());
        differs = differs.flatten();
        long count = differs.count_nonzero().item<long>();
        if (count == 0) return;
        long at = differs.nonzero()[0, 0].item<long>();
        var a = actual.contiguous().flatten().to(ScalarType.Float64)[at].item<double>();
        var e = expected.contiguous().flatten().to(ScalarType.Float64)[at].item<double>();
        Assert.Fail(string.Create(CultureInfo.InvariantCulture,
            $"{name}: {count} of {expected.numel()} entries differ from libtorch's in kind (NaN/+inf/-inf/finite); first at flat index {at}: ours {a}, libtorch's {e}"));
    }

    /// <summary>0 finite, 1 NaN, 2 +∞, 3 −∞, entry by entry (in logical, not memory, order).</summary>
    private static Tensor Kinds(Tensor t)
    {
        var kinds = torch.zeros(t.shape, ScalarType.Int8);
        kinds.masked_fill_(t.isnan(), 1);
        kinds.masked_fill_(t.isposinf(), 2);
        kinds.masked_fill_(t.isneginf(), 3);
        return kinds;
    }

    /// <summary>max |actual − expected| / max |expected| over the entries finite in both; 0 when there are none.</summary>
    private static double FiniteRelativeError(Tensor actual, Tensor expected)
    {
        var finite = actual.isfinite().logical_and(expected.isfinite());
        return TestTensors.RelativeError(actual.masked_select(finite), expected.masked_select(finite));
    }
}
