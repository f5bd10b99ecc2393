using System.Globalization;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Kernels.Cpu;

/// <summary>
/// float16 and bfloat16 on the fused CPU kernels: error against float64 for the same (half-precision)
/// values, ours beside libtorch's CPU kernel in the same dtype. Both compute in float32 and round once, so
/// ours must be no worse, up to the float32 work's own error (<see cref="ParityCheck.Float32Work"/>), which
/// can send a value near a rounding boundary the other way. Each test prints both errors.
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
        // float32 work can move a value near a rounding boundary of the dtype to the other side: ours may then
        // round the other way from libtorch, by up to that work's error, never by more.
        double work = ParityCheck.Float32Work(x, groups, Eps);
        Compare(ours, native, exact, work, $"{dtype} {layout} mean {mean} parameters {parameterType}");

        // Also absolutely, whatever libtorch's error: one rounding to the output's dtype after float32 work.
        double outputBound = ParityCheck.UnitRoundoff(dtype) + work, parameterBound = ParityCheck.UnitRoundoff(parameterType) + work;
        Assert.Multiple(() =>
        {
            Assert.That(Err(ours.Y, exact.Y), Is.LessThanOrEqualTo(outputBound), "y vs float64");
            Assert.That(Err(ours.Dx!, exact.Dx!), Is.LessThanOrEqualTo(outputBound), "dx vs float64");
            Assert.That(Err(ours.Dweight!, exact.Dweight!), Is.LessThanOrEqualTo(parameterBound), "dweight vs float64");
            Assert.That(Err(ours.Dbias!, exact.Dbias!), Is.LessThanOrEqualTo(parameterBound), "dbias vs float64");
        });
    }

    private static void Compare(GroupNormResult ours, GroupNormResult native, GroupNormResult exact, double margin, string label)
    {
        var o = new[] { Err(ours.Y, exact.Y), Err(ours.Dx!, exact.Dx!), Err(ours.Dweight!, exact.Dweight!), Err(ours.Dbias!, exact.Dbias!) };
        var n = new[] { Err(native.Y, exact.Y), Err(native.Dx!, exact.Dx!), Err(native.Dweight!, exact.Dweight!), Err(native.Dbias!, exact.Dbias!) };
        TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{label}: error vs float64 (relative to max|reference|), margin {margin:E2}\n" +
            $"  ours:   y={o[0]:E2} dx={o[1]:E2} dweight={o[2]:E2} dbias={o[3]:E2}\n" +
            $"  native: y={n[0]:E2} dx={n[1]:E2} dweight={n[2]:E2} dbias={n[3]:E2}"));
        string[] names = { "y", "dx", "dweight", "dbias" };
        Assert.Multiple(() =>
        {
            for (int i = 0; i < 4; i++)
                Assert.That(o[i], Is.LessThanOrEqualTo(n[i] + margin), names[i]);
        });
    }

    private static double Err(Tensor actual, Tensor exact) => TestTensors.RelativeError(actual, exact);
}
