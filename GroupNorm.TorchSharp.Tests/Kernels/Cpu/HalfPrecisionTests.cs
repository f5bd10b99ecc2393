using System;
using System.Globalization;
using GroupNormalization.Tests.Parity;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Kernels.Cpu;

/// <summary>
/// float16 and bfloat16 on the fused CPU kernels: error against float64 for the same (half-precision)
/// values, ours beside libtorch's CPU kernel in the same dtype. Both compute in float32 and round once, so
/// ours must be no worse; with float32 statistics and sums, it is usually a little better. Each test prints
/// both errors.
/// </summary>
[TestFixture]
public sealed class HalfPrecisionTests
{
    private const double Eps = 1e-5;

    [Test]
    public void ErrorIsNoWorseThanLibtorchInTheSameDtype(
        [Values(ScalarType.Float16, ScalarType.BFloat16)] ScalarType dtype,
        [Values(Layout.Contiguous, Layout.ChannelsLast)] Layout layout,
        [Values(0.0, 20.0)] double mean,
        [Values(false, true)] bool float32Parameters)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(7);
        var shape = new long[] { 2, 32, 12, 12 };
        const long groups = 8;
        var x = (TestTensors.Input(shape, layout, ScalarType.Float32, torch.CPU) + mean).to(dtype);
        var dy = torch.randn(shape).to(dtype);
        var parameterType = float32Parameters ? ScalarType.Float32 : dtype;
        var w = (torch.rand(32) + 0.5).to(parameterType);
        var b = torch.randn(32).to(parameterType);

        var exact = Oracle.Native(x.to(ScalarType.Float64), groups, w.to(ScalarType.Float64), b.to(ScalarType.Float64), Eps, dy.to(ScalarType.Float64));
        var ours = Oracle.Ours(KernelPath.Default, x, groups, w, b, Eps, dy);
        var native = Oracle.Native(x, groups, w, b, Eps, dy);

        Assert.Multiple(() =>
        {
            Assert.That(ours.Y.dtype, Is.EqualTo(dtype), "y keeps the input's dtype");
            Assert.That(ours.Dx!.dtype, Is.EqualTo(dtype), "dx keeps the input's dtype");
            Assert.That(ours.Dweight!.dtype, Is.EqualTo(parameterType), "dweight keeps the parameter's dtype");
            Assert.That(ours.Dbias!.dtype, Is.EqualTo(parameterType), "dbias keeps the parameter's dtype");
        });
        Compare(ours, native, exact, $"{dtype} {layout} mean {mean} parameters {parameterType}");

        // Also absolutely, whatever libtorch's error: each output is computed in float32 from exact inputs and
        // rounded once, so it is within half an ulp of its largest element (2^-11 of max|exact| for float16,
        // 2^-8 for bfloat16, 0 for float32) plus float32's own error, a few 2^-24 (1e-6 leaves room).
        Assert.Multiple(() =>
        {
            Assert.That(Err(ours.Y, exact.Y), Is.LessThanOrEqualTo(OneRounding(dtype) + 1e-6), "y vs float64");
            Assert.That(Err(ours.Dx!, exact.Dx!), Is.LessThanOrEqualTo(OneRounding(dtype) + 1e-6), "dx vs float64");
            Assert.That(Err(ours.Dweight!, exact.Dweight!), Is.LessThanOrEqualTo(OneRounding(parameterType) + 1e-6), "dweight vs float64");
            Assert.That(Err(ours.Dbias!, exact.Dbias!), Is.LessThanOrEqualTo(OneRounding(parameterType) + 1e-6), "dbias vs float64");
        });
    }

    private static double OneRounding(ScalarType dtype) => dtype switch
    {
        ScalarType.Float16 => Math.Pow(2, -11),
        ScalarType.BFloat16 => Math.Pow(2, -8),
        _ => 0,
    };

    private static void Compare(GroupNormResult ours, GroupNormResult native, GroupNormResult exact, string label)
    {
        var o = new[] { Err(ours.Y, exact.Y), Err(ours.Dx!, exact.Dx!), Err(ours.Dweight!, exact.Dweight!), Err(ours.Dbias!, exact.Dbias!) };
        var n = new[] { Err(native.Y, exact.Y), Err(native.Dx!, exact.Dx!), Err(native.Dweight!, exact.Dweight!), Err(native.Dbias!, exact.Dbias!) };
        TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{label}: error vs float64 (relative to max|reference|)\n" +
            $"  ours:   y={o[0]:E2} dx={o[1]:E2} dweight={o[2]:E2} dbias={o[3]:E2}\n" +
            $"  native: y={n[0]:E2} dx={n[1]:E2} dweight={n[2]:E2} dbias={n[3]:E2}"));
        string[] names = { "y", "dx", "dweight", "dbias" };
        Assert.Multiple(() =>
        {
            for (int i = 0; i < 4; i++)
                Assert.That(o[i], Is.LessThanOrEqualTo(n[i] * 1.0001), names[i]);
        });
    }

    private static double Err(Tensor actual, Tensor exact) => TestTensors.RelativeError(actual, exact);
}
