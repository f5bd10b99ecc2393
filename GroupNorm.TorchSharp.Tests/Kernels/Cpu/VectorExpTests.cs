using System;
using System.Numerics;
using System.Runtime.Intrinsics;
using GroupNormalization.Kernels.Cpu;
using NUnit.Framework;

namespace GroupNormalization.Tests.Kernels.Cpu;

/// <summary>
/// The fused SiLU's own exponential against <see cref="Math.Exp"/>, over the whole range where it is not
/// clamped, on every vector width it is written for; and what clamping and NaN do.
/// </summary>
public sealed class VectorExpTests
{
    /// <summary>2.1e-7 measured for the float32 algorithm (under two ulps); 3e-7 leaves rounding room.</summary>
    private const double Float32Bound = 3e-7;

    private static float[] Arguments()
    {
        var values = new float[70000];
        for (int i = 0; i < values.Length; i++) values[i] = -87f + 175f * i / (values.Length - 1);
        return values;
    }

    [Test]
    public void Float32IsWithinTwoUlpsOfMathExp()
    {
        var x = Arguments();
        double worst = 0;
        int w = Vector<float>.Count;
        for (int i = 0; i + w <= x.Length; i += w)
        {
            var e = VectorExp.Exp(new Vector<float>(x, i));
            for (int k = 0; k < w; k++) worst = Math.Max(worst, Math.Abs(e[k] / Math.Exp(x[i + k]) - 1));
        }
        TestContext.Out.WriteLine($"Vector<float> ({w} lanes): worst relative error {worst:E2}");
        Assert.That(worst, Is.LessThanOrEqualTo(Float32Bound));
    }

    [Test]
    public void Float32At512BitsIsAsAccurate()
    {
        // Runs without AVX-512 too (Vector512 then works in software), so the formula is checked everywhere.
        var x = Arguments();
        double worst = 0;
        for (int i = 0; i + 16 <= x.Length; i += 16)
        {
            var e = VectorExp.Exp(Vector512.Create(x.AsSpan(i, 16)));
            for (int k = 0; k < 16; k++) worst = Math.Max(worst, Math.Abs(e[k] / Math.Exp(x[i + k]) - 1));
        }
        TestContext.Out.WriteLine($"Vector512<float>: worst relative error {worst:E2}");
        Assert.That(worst, Is.LessThanOrEqualTo(Float32Bound));
    }

    [Test]
    public void Float64IsWithinAFewUlpsOfMathExp()
    {
        double worst = 0;
        int w = Vector<double>.Count;
        var lanes = new double[w];
        for (int i = 0; i < 200000; i += w)
        {
            for (int k = 0; k < w; k++) lanes[k] = -700.0 + 1400.0 * (i + k) / 200000;
            var e = VectorExp.Exp(new Vector<double>(lanes));
            for (int k = 0; k < w; k++) worst = Math.Max(worst, Math.Abs(e[k] / Math.Exp(lanes[k]) - 1));
        }
        TestContext.Out.WriteLine($"Vector<double>: worst relative error {worst:E2}");
        Assert.That(worst, Is.LessThanOrEqualTo(2e-15));
    }

    [Test]
    public void ClampedArgumentsAndNaN()
    {
        var e = VectorExp.Exp(new Vector<float>(float.NaN));
        var high = VectorExp.Exp(new Vector<float>(1000f));
        var low = VectorExp.Exp(new Vector<float>(-1000f));
        Assert.Multiple(() =>
        {
            Assert.That(float.IsNaN(e[0]), Is.True, "NaN must stay NaN");
            Assert.That(float.IsFinite(high[0]) && high[0] > 1e38f, Is.True, $"a large argument saturates at e^88, got {high[0]}");
            Assert.That(low[0] >= 0 && low[0] < 1e-37f, Is.True, $"a very negative argument gives about 0, got {low[0]}");
        });
    }
}
