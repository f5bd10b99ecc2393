using System;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests;

/// <summary>
/// Malformed calls raise an ArgumentException (or a subclass) that names the argument and its value,
/// before anything reaches libtorch: no crash, no native error text.
/// </summary>
[TestFixture]
public sealed class ArgumentErrorTests
{
    private static void AssertRejected(Action call, string paramName, params string[] fragments)
    {
        var e = (ArgumentException)Assert.Throws(Is.InstanceOf<ArgumentException>(), call)!;
        Assert.Multiple(() =>
        {
            Assert.That(e.ParamName, Is.EqualTo(paramName));
            foreach (var fragment in fragments)
                Assert.That(e.Message, Does.Contain(fragment));
        });
    }

    [Test]
    public void ModuleRejectsChannelsNotDivisibleByGroups() =>
        AssertRejected(() => new GroupNorm(4, 6).Dispose(), "num_channels", "num_channels=6", "num_groups=4");

    [Test]
    public void FunctionalRejectsChannelsNotDivisibleByGroups()
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(2, 6, 3);
        AssertRejected(() => Functional.group_norm(x, 4), "num_groups", "num_groups=4", "[2, 6, 3]");
    }

    [Test]
    public void ModuleRejectsInputWithOtherChannelCount()
    {
        using var scope = torch.NewDisposeScope();
        using var m = new GroupNorm(2, 6);
        var x = torch.randn(2, 8, 3);
        AssertRejected(() => m.forward(x), "input", "6 channels", "[2, 8, 3]");
    }

    [Test]
    public void RejectsZeroDimensionalInput()
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.tensor(1.0f);
        AssertRejected(() => Functional.group_norm(x, 1), "input", "received 0", "[]");
    }

    [Test]
    public void RejectsOneDimensionalInput()
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(6);
        AssertRejected(() => Functional.group_norm(x, 1), "input", "received 1", "[6]");
    }

    [Test]
    public void RejectsNullInput() =>
        Assert.That(() => Functional.group_norm(null!, 1), Throws.InstanceOf<ArgumentNullException>().With.Property("ParamName").EqualTo("input"));

    [Test]
    public void RejectsWeightOfWrongLength()
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(2, 6, 3);
        var w = torch.ones(5);
        AssertRejected(() => Functional.group_norm(x, 2, w), "weight", "weight of shape [5]", "[2, 6, 3]");
    }

    [Test]
    public void RejectsBiasOfWrongRank()
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(2, 6, 3);
        var b = torch.zeros(6, 1);
        AssertRejected(() => Functional.group_norm(x, 2, bias: b), "bias", "bias of shape [6, 1]");
    }

    [Test]
    public void RejectsWeightOfOtherDtype()
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(new long[] { 2, 6, 3 }, ScalarType.Float64);
        var w = torch.ones(6, ScalarType.Float32);
        AssertRejected(() => Functional.group_norm(x, 2, w), "weight", "Float64", "dtype Float32");
    }

    [Test]
    public void ModuleRejectsInputOfOtherDtypeThanItsParameters()
    {
        using var scope = torch.NewDisposeScope();
        using var m = new GroupNorm(2, 6);
        var x = torch.randn(new long[] { 2, 6, 3 }, ScalarType.Float64);
        AssertRejected(() => m.forward(x), "weight", "Float64", "dtype Float32");
    }

    [Test]
    public void RejectsBiasOfOtherDtype()
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(2, 6, 3);
        var b = torch.zeros(6, ScalarType.Float16);
        AssertRejected(() => Functional.group_norm(x, 2, bias: b), "bias", "Float32", "dtype Float16");
    }

    /// <summary>The meta device holds shapes without data, so a second device exists without CUDA.</summary>
    [Test]
    public void RejectsParametersOnAnotherDevice([Values("weight", "bias")] string which)
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(2, 6, 3);
        var onMeta = torch.empty(6, device: torch.META);
        Assert.That(onMeta.device_type, Is.EqualTo(DeviceType.META));
        Action call = which == "weight"
            ? () => Functional.group_norm(x, 2, weight: onMeta)
            : () => Functional.group_norm(x, 2, bias: onMeta);
        AssertRejected(call, which, $"{which} on meta", "(cpu)");
    }

    [Test]
    public void RejectsNonFloatingInput([Values(ScalarType.Int32, ScalarType.Int64, ScalarType.Int8, ScalarType.Byte, ScalarType.Bool, ScalarType.ComplexFloat32, ScalarType.ComplexFloat64)] ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.ones(new long[] { 2, 6, 3 }, dtype);
        AssertRejected(() => Functional.group_norm(x, 2), "input", $"dtype {dtype}");
    }

    [Test]
    public void FunctionalRejectsNonPositiveGroups([Values(0, -1)] long groups)
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(2, 6, 3);
        Assert.That(() => Functional.group_norm(x, groups), Throws.InstanceOf<ArgumentOutOfRangeException>());
        AssertRejected(() => Functional.group_norm(x, groups), "num_groups", $"num_groups={groups}");
    }

    [Test]
    public void ModuleRejectsNonPositiveGroups([Values(0, -2)] long groups) =>
        AssertRejected(() => new GroupNorm(groups, 6).Dispose(), "num_groups", $"num_groups={groups}");

    [Test]
    public void ModuleRejectsNonPositiveChannels([Values(0, -3)] long channels) =>
        AssertRejected(() => new GroupNorm(1, channels).Dispose(), "num_channels", $"num_channels={channels}");

    [Test]
    public void RejectsNegativeOrNaNEps([Values(-1e-5, double.NaN)] double eps)
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(2, 6, 3);
        var text = double.IsNaN(eps) ? "eps=nan" : "eps=-1e-05";
        AssertRejected(() => Functional.group_norm(x, 2, eps: eps), nameof(eps), text);
        AssertRejected(() => new GroupNorm(2, 6, eps: eps).Dispose(), nameof(eps), text);
    }

    [Test]
    public void RejectsDisposedInput()
    {
        var x = torch.randn(2, 6, 3);
        x.Dispose();
        AssertRejected(() => Functional.group_norm(x, 2), "input", "disposed");
    }

    [Test]
    public void ModuleRejectsDisposedWeight()
    {
        using var scope = torch.NewDisposeScope();
        using var m = new GroupNorm(2, 6);
        m.weight!.Dispose();
        var x = torch.randn(2, 6, 3);
        AssertRejected(() => m.forward(x), "weight", "disposed");
    }

    [Test]
    public void RejectsDisposedBias()
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(2, 6, 3);
        var b = torch.zeros(6);
        b.Dispose();
        AssertRejected(() => Functional.group_norm(x, 2, bias: b), "bias", "disposed");
    }

    [Test]
    public void RejectsSparseInput()
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(2, 6).to_sparse();
        Assert.That(x.is_sparse, Is.True);
        AssertRejected(() => Functional.group_norm(x, 2), "input", "sparse");
    }

    [Test]
    public void ModuleRejectsUndefinedActivation()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new GroupNorm(2, 6, activation: (Activation)7).Dispose());
        Assert.Multiple(() =>
        {
            Assert.That(e!.ParamName, Is.EqualTo("activation"));
            Assert.That(e.Message, Does.Contain("activation=7"));
        });
    }

    [Test]
    public void FunctionalRejectsUndefinedActivation([Values(-1, 4, 7)] int value)
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(2, 6, 3);
        Assert.That(() => Functional.group_norm(x, 2, activation: (Activation)value), Throws.InstanceOf<ArgumentOutOfRangeException>());
        AssertRejected(() => Functional.group_norm(x, 2, activation: (Activation)value), "activation", $"activation={value}");
    }

    /// <summary>A fused activation does not change the dtype rule: integer and bool inputs are refused before any kernel, GELU included.</summary>
    [Test]
    public void GeluOnANonFloatingInputIsRejected([Values(ScalarType.Int64, ScalarType.Int32, ScalarType.Bool)] ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.ones(new long[] { 2, 6, 3 }, dtype);
        AssertRejected(() => Functional.group_norm(x, 2, activation: Activation.GELU), "input", $"dtype {dtype}");
        using var module = new GroupNorm(2, 6, activation: Activation.GELU);
        AssertRejected(() => module.forward(x), "input", $"dtype {dtype}");
    }

    /// <summary>
    /// PyTorch refuses a batch in which every group holds one value (N·C/G·S = 1): its variance is 0 and
    /// the output would be β whatever x is. Both entry points, with and without an activation.
    /// </summary>
    [Test]
    public void RejectsOneValuePerGroup([Values(new long[] { 1, 10 }, new long[] { 1, 10, 1 }, new long[] { 1, 10, 1, 1 })] long[] shape,
        [Values(Activation.None, Activation.SiLU)] Activation activation)
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(shape);
        var text = "[" + string.Join(", ", shape) + "]";
        AssertRejected(() => Functional.group_norm(x, 10, activation: activation), "input", text, "num_groups=10");
        using var m = new GroupNorm(10, 10, activation: activation);
        AssertRejected(() => m.forward(x), "input", text);
    }

    /// <summary>
    /// One value per group in each sample is fine once the batch has two samples (the statistics still
    /// see a single value each: y is β there, as in PyTorch), and an empty batch has no groups at all.
    /// </summary>
    [Test]
    public void AcceptsOneValuePerGroupInALargerOrEmptyBatch([Values(2, 0)] long batch, [Values(Activation.None, Activation.SiLU)] Activation activation)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(66);
        var shape = new[] { batch, 10L, 1L };
        var x = torch.randn(shape).requires_grad_();
        var b = torch.randn(10);
        // eps = 1 makes r exactly 1: with the default eps, x·r and μ·r (≈ 300·x) cancel to β only up to
        // their own rounding, which is not what this test is about (DegenerateGroupTests measures that).
        var y = Functional.group_norm(x, 10, torch.ones(10), b, eps: 1, activation: activation);
        var expected = Oracle.Activate(b.expand(batch, 10).unsqueeze(2), activation);
        y.sum().backward();
        Assert.Multiple(() =>
        {
            Assert.That(y.shape, Is.EqualTo(shape));
            Assert.That(x.grad!.shape, Is.EqualTo(shape));
            Assert.That(TestTensors.RelativeError(y, expected), Is.LessThanOrEqualTo(ParityCheck.Float32Tolerance), "y must be act(β)");
        });
    }

    /// <summary>Each parameter may be float32 beside a half input, but the two must agree with each other.</summary>
    [Test]
    public void RejectsWeightAndBiasOfDifferentDtypes([Values(ScalarType.Float16, ScalarType.BFloat16)] ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(new long[] { 2, 6, 3 }).to(dtype);
        var w = torch.ones(6, ScalarType.Float32);
        var b = torch.zeros(6, dtype);
        AssertRejected(() => Functional.group_norm(x, 2, w, b), "bias", "weight of dtype Float32", $"bias of dtype {dtype}");
        AssertRejected(() => Functional.group_norm(x, 2, b, w), "bias", $"weight of dtype {dtype}", "bias of dtype Float32");
    }

    /// <summary>float32 is the only parameter dtype a half input may be mixed with, as in PyTorch.</summary>
    [TestCase(ScalarType.Float16, ScalarType.Float64)]
    [TestCase(ScalarType.BFloat16, ScalarType.Float64)]
    [TestCase(ScalarType.Float16, ScalarType.BFloat16)]
    [TestCase(ScalarType.BFloat16, ScalarType.Float16)]
    [TestCase(ScalarType.Float32, ScalarType.Float16)]
    public void RejectsMixedParametersOtherThanFloat32(ScalarType input, ScalarType parameter)
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(new long[] { 2, 6, 3 }).to(input);
        var p = torch.ones(6, parameter);
        AssertRejected(() => Functional.group_norm(x, 2, p), "weight", $"({input})", $"weight of dtype {parameter}");
        AssertRejected(() => Functional.group_norm(x, 2, bias: p), "bias", $"({input})", $"bias of dtype {parameter}");
    }

    [Test]
    public void ModuleOfFloat64RejectsFloat16Input()
    {
        using var scope = torch.NewDisposeScope();
        using var m = new GroupNorm(2, 6, dtype: ScalarType.Float64, activation: Activation.SiLU);
        var x = torch.randn(new long[] { 2, 6, 3 }).to(ScalarType.Float16);
        AssertRejected(() => m.forward(x), "weight", "Float16", "dtype Float64");
    }

    [Test]
    public void ModuleRejectsIntegerDtype([Values(ScalarType.Int32, ScalarType.Int64, ScalarType.Bool)] ScalarType dtype) =>
        AssertRejected(() => new GroupNorm(2, 4, dtype: dtype).Dispose(), nameof(dtype), $"dtype={dtype}");
}
