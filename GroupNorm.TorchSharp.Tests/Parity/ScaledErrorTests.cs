using System;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Parity;

/// <summary>
/// The error measure every numeric test asserts through: if it returned NaN or 0 for a broken result, every
/// "error ≤ tolerance" assertion built on it would pass.
/// </summary>
[TestFixture]
public sealed class ScaledErrorTests
{
    private static Tensor T(params double[] values) => torch.tensor(values, ScalarType.Float64);

    [Test]
    public void MeasuresTheLargestDifferenceAgainstTheLargerOfResultAndScale()
    {
        using var scope = torch.NewDisposeScope();
        Assert.Multiple(() =>
        {
            Assert.That(TestTensors.ScaledError(T(1, 2.5), T(1, 2), 0), Is.EqualTo(0.25), "against max|expected| = 2");
            Assert.That(TestTensors.ScaledError(T(1, 2.5), T(1, 2), 10), Is.EqualTo(0.05), "against the scale 10");
            Assert.That(TestTensors.RelativeError(T(1, 2.5), T(1, 2)), Is.EqualTo(0.25), "RelativeError is the scale-0 case");
            Assert.That(TestTensors.ScaledError(T(0, 1e-300), T(0, 0), 0), Is.GreaterThan(1),
                "a nonzero result against an all-zero reference with no scale");
            Assert.That(TestTensors.ScaledError(T(0, 0), T(0, 0), 0), Is.Zero, "equal zeros");
            Assert.That(TestTensors.ScaledError(T(1, 2).to(ScalarType.Float32), T(1, 2), 0), Is.Zero, "dtypes are compared as float64");
        });
    }

    [Test]
    public void NaNAnywhereIsAnInfiniteError()
    {
        using var scope = torch.NewDisposeScope();
        Assert.Multiple(() =>
        {
            Assert.That(TestTensors.ScaledError(T(1, double.NaN), T(1, 2), 1), Is.EqualTo(double.PositiveInfinity), "NaN in actual");
            Assert.That(TestTensors.ScaledError(T(1, 2), T(double.NaN, 2), 1), Is.EqualTo(double.PositiveInfinity), "NaN in expected");
            Assert.That(TestTensors.ScaledError(T(double.NaN), T(double.NaN), 1), Is.EqualTo(double.PositiveInfinity), "NaN in both");
            Assert.That(TestTensors.ScaledError(T(double.NaN).to(ScalarType.Float16), T(0), 1), Is.EqualTo(double.PositiveInfinity), "NaN in a half tensor");
            Assert.That(TestTensors.RelativeError(T(double.NaN, 0), T(0, 0)), Is.EqualTo(double.PositiveInfinity), "NaN against zeros, no scale");
        });
    }

    [Test]
    public void InfinitiesCountOnlyWhereTheyDiffer()
    {
        using var scope = torch.NewDisposeScope();
        double inf = double.PositiveInfinity;
        Assert.Multiple(() =>
        {
            Assert.That(TestTensors.ScaledError(T(inf, 1), T(2, 1), 1), Is.EqualTo(inf), "infinity in actual only");
            Assert.That(TestTensors.ScaledError(T(2, 1), T(inf, 1), 1), Is.EqualTo(inf), "infinity in expected only");
            Assert.That(TestTensors.ScaledError(T(-inf, 1), T(inf, 1), 1), Is.EqualTo(inf), "infinities of opposite sign");
            Assert.That(TestTensors.ScaledError(T(inf, 1.5), T(inf, 1), 0), Is.EqualTo(0.5),
                "equal infinities: the finite entries are measured, against the finite reference");
        });
    }

    [Test]
    public void EmptyTensorsHaveNoErrorAndShapesMustAgree()
    {
        using var scope = torch.NewDisposeScope();
        Assert.Multiple(() =>
        {
            Assert.That(TestTensors.ScaledError(torch.empty(0, 3), torch.empty(0, 3), 0), Is.Zero, "empty");
            Assert.Throws<ArgumentException>(() => TestTensors.ScaledError(T(1, 2), T(1, 2, 3), 1), "lengths differ");
            Assert.Throws<ArgumentException>(() => TestTensors.ScaledError(T(1, 2).reshape(2, 1), T(1, 2), 1), "ranks differ");
            Assert.Throws<ArgumentException>(() => TestTensors.ScaledError(torch.empty(0, 3), torch.empty(3, 0), 1), "empty of different shapes");
        });
    }
}
