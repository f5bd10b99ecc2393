using GroupNormalization.Kernels.Cpu;
using NUnit.Framework;

namespace GroupNormalization.Tests.Kernels.Cpu;

/// <summary>The statistics helpers the fused kernels build on, checked on values with known answers.</summary>
[TestFixture]
public sealed class GroupNormMathTests
{
    // Values 1e6 + {−2, −1, 0, 1, 2}: mean 1e6, biased variance 2.
    private static readonly double[] Values = { 1e6 - 2, 1e6 - 1, 1e6, 1e6 + 1, 1e6 + 2 };

    private static (double Dev, double SqDev) Deviations(double shift)
    {
        double s = 0, q = 0;
        foreach (var v in Values)
        {
            s += v - shift;
            q += (v - shift) * (v - shift);
        }
        return (s, q);
    }

    [TestCase(1e6)]
    [TestCase(1e6 + 0.5)]
    [TestCase(1e6 - 30)]
    public void ShiftedMomentsRecoverMeanAndVarianceForAnyShift(double shift)
    {
        var (dev, sq) = Deviations(shift);
        var m = GroupNormMath.ShiftedMoments(Values.Length, shift, dev, sq);
        Assert.Multiple(() =>
        {
            Assert.That(m.Mean, Is.EqualTo(1e6).Within(1e-9));
            Assert.That(m.Variance, Is.EqualTo(2.0).Within(1e-9));
        });
    }

    /// <summary>Σd² ≤ 4·M2 exactly when (K − μ)² ≤ 3σ²: here σ² = 2, so the limit is |K − μ| = √6 ≈ 2.45.</summary>
    [TestCase(0.0, true)]
    [TestCase(2.4, true)]
    [TestCase(-2.4, true)]
    [TestCase(2.5, false)]
    [TestCase(-30.0, false)]
    public void ShiftIsCloseWithinSqrt3Sigma(double offset, bool close)
    {
        var (dev, sq) = Deviations(1e6 + offset);
        Assert.That(GroupNormMath.ShiftWasClose(Values.Length, dev, sq), Is.EqualTo(close));
    }

    [Test]
    public void EmptyAndConstantSetsNeedNoSecondPass()
    {
        Assert.Multiple(() =>
        {
            Assert.That(GroupNormMath.ShiftWasClose(0, 0, 0), Is.True, "empty");
            Assert.That(GroupNormMath.ShiftWasClose(5, 0, 0), Is.True, "constant, shift equal to it");
            Assert.That(GroupNormMath.ShiftedMoments(0, 3, 0, 0).Count, Is.EqualTo(0), "empty");
        });
    }
}
