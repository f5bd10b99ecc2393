using System;
using System.Linq;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests;

/// <summary>The module's state, parameters, conversions and life cycle, and its use inside TorchSharp.</summary>
[TestFixture]
public sealed class ModuleTests
{
    private static readonly string[] s_parameterNames = { "weight", "bias" };

    [Test]
    public void NewModuleHasWeightOneAndBiasZero()
    {
        using var scope = torch.NewDisposeScope();
        using var m = new GroupNorm(32, 256);
        Assert.Multiple(() =>
        {
            Assert.That(m.weight!.shape, Is.EqualTo(new long[] { 256 }));
            Assert.That(m.bias!.shape, Is.EqualTo(new long[] { 256 }));
            Assert.That(m.weight!.eq(1).all().item<bool>(), Is.True, "weight");
            Assert.That(m.bias!.eq(0).all().item<bool>(), Is.True, "bias");
            Assert.That(m.weight!.requires_grad && m.bias!.requires_grad, Is.True, "parameters must be trainable");
        });
    }

    [Test]
    public void ResetParametersRestoresOneAndZero()
    {
        using var scope = torch.NewDisposeScope();
        using var m = new GroupNorm(2, 6);
        using (torch.no_grad())
        {
            m.weight!.uniform_(2, 3);
            m.bias!.uniform_(2, 3);
        }
        Assume.That(m.weight!.eq(1).any().item<bool>(), Is.False);
        m.reset_parameters();
        Assert.Multiple(() =>
        {
            Assert.That(m.weight!.eq(1).all().item<bool>(), Is.True);
            Assert.That(m.bias!.eq(0).all().item<bool>(), Is.True);
        });
    }

    [Test]
    public void NonAffineModuleHasNoParametersAndAnEmptyStateDict()
    {
        using var scope = torch.NewDisposeScope();
        using var m = new GroupNorm(2, 6, affine: false);
        Assert.Multiple(() =>
        {
            Assert.That(m.weight, Is.Null);
            Assert.That(m.bias, Is.Null);
            Assert.That(m.parameters().Count(), Is.Zero);
            Assert.That(m.state_dict(), Is.Empty);
        });
        var x = torch.randn(2, 6, 3);
        var expected = torch.nn.functional.group_norm(x, 2, eps: 1e-5);
        Assert.That(TestTensors.RelativeError(m.forward(x), expected), Is.LessThanOrEqualTo(ParityCheck.Float32Tolerance));
    }

    [Test]
    public void StateDictKeysAreWeightAndBias()
    {
        using var scope = torch.NewDisposeScope();
        using var m = new GroupNorm(2, 6);
        Assert.That(m.state_dict().Keys, Is.EquivalentTo(s_parameterNames));
    }

    [Test]
    public void StateDictLoadsIntoTorchSharpsGroupNorm()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(61);
        using var ours = new GroupNorm(4, 8);
        using (torch.no_grad())
        {
            ours.weight!.uniform_(0.5, 1.5);
            ours.bias!.normal_();
        }
        // TorchSharp's module leaves its parameters uninitialised: give them values that must be replaced.
        using var theirs = torch.nn.GroupNorm(4, 8);
        using (torch.no_grad())
        {
            theirs.weight.fill_(7);
            theirs.bias!.fill_(7);
        }
        var (missing, unexpected) = theirs.load_state_dict(ours.state_dict());
        Assert.That(missing.Concat(unexpected), Is.Empty);
        AssertSameOutput(ours, theirs);
    }

    [Test]
    public void TorchSharpsGroupNormStateDictLoadsIntoOurs()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(62);
        using var theirs = torch.nn.GroupNorm(4, 8);
        using (torch.no_grad())
        {
            theirs.weight.uniform_(0.5, 1.5);
            theirs.bias!.normal_();
        }
        using var ours = new GroupNorm(4, 8);
        var (missing, unexpected) = ours.load_state_dict(theirs.state_dict());
        Assert.That(missing.Concat(unexpected), Is.Empty);
        Assert.That(ours.weight!.eq(1).all().item<bool>(), Is.False, "the load left our initial weight");
        AssertSameOutput(ours, theirs);
    }

    private static void AssertSameOutput(GroupNorm ours, TorchSharp.Modules.GroupNorm theirs)
    {
        // TorchSharp's module rejects (N, C) input, so compare on 4-d.
        var x = torch.randn(2, 8, 5, 5);
        using var a = ours.forward(x);
        using var b = theirs.forward(x);
        Assert.That(TestTensors.RelativeError(a, b), Is.LessThanOrEqualTo(ParityCheck.Float32Tolerance));
    }

    [Test]
    public void ToFloat64ConvertsParametersAndRunsOnFloat64Input()
    {
        using var scope = torch.NewDisposeScope();
        using var m = new GroupNorm(2, 6);
        m.to(ScalarType.Float64);
        Assert.Multiple(() =>
        {
            Assert.That(m.weight!.dtype, Is.EqualTo(ScalarType.Float64));
            Assert.That(m.bias!.dtype, Is.EqualTo(ScalarType.Float64));
            Assert.That(m.parameters().Select(p => p.dtype), Is.All.EqualTo(ScalarType.Float64));
        });
        var x = torch.randn(new long[] { 3, 6, 4 }, ScalarType.Float64);
        var y = m.forward(x);
        var expected = torch.nn.functional.group_norm(x, 2, torch.ones(6, ScalarType.Float64), torch.zeros(6, ScalarType.Float64));
        Assert.Multiple(() =>
        {
            Assert.That(y.dtype, Is.EqualTo(ScalarType.Float64));
            Assert.That(TestTensors.RelativeError(y, expected), Is.LessThanOrEqualTo(ParityCheck.Float64Tolerance));
        });
    }

    [Test]
    public void ToStringIsPyTorchsRepr()
    {
        using var a = new GroupNorm(32, 256);
        using var b = new GroupNorm(2, 6, eps: 1e-3, affine: false);
        Assert.Multiple(() =>
        {
            Assert.That(a.ToString(), Is.EqualTo("GroupNorm(32, 256, eps=1e-05, affine=True)"));
            Assert.That(b.ToString(), Is.EqualTo("GroupNorm(2, 6, eps=0.001, affine=False)"));
        });
    }

    [Test]
    public void ToStringNamesAFusedActivationOnly()
    {
        using var none = new GroupNorm(32, 256, activation: Activation.None);
        using var silu = new GroupNorm(32, 256, activation: Activation.SiLU);
        using var relu = new GroupNorm(2, 6, eps: 1e-3, affine: false, activation: Activation.ReLU);
        Assert.Multiple(() =>
        {
            Assert.That(none.ToString(), Is.EqualTo("GroupNorm(32, 256, eps=1e-05, affine=True)"));
            Assert.That(silu.ToString(), Is.EqualTo("GroupNorm(32, 256, eps=1e-05, affine=True, activation=SiLU)"));
            Assert.That(relu.ToString(), Is.EqualTo("GroupNorm(2, 6, eps=0.001, affine=False, activation=ReLU)"));
            Assert.That(silu.activation, Is.EqualTo(Activation.SiLU));
        });
    }

    /// <summary>
    /// The activation is configuration, not state: a module with one saves and loads the same two keys as
    /// PyTorch's GroupNorm, so its checkpoint moves to TorchSharp's module (followed by a separate silu) and back.
    /// </summary>
    [Test]
    public void ModuleWithActivationRoundTripsItsStateDict()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(65);
        using var ours = new GroupNorm(4, 8, activation: Activation.SiLU);
        using (torch.no_grad())
        {
            ours.weight!.uniform_(0.5, 1.5);
            ours.bias!.normal_();
        }
        Assert.That(ours.state_dict().Keys, Is.EquivalentTo(s_parameterNames));

        using var theirs = torch.nn.GroupNorm(4, 8);
        var (missing, unexpected) = theirs.load_state_dict(ours.state_dict());
        Assert.That(missing.Concat(unexpected), Is.Empty, "ours → TorchSharp's");

        using var back = new GroupNorm(4, 8, activation: Activation.SiLU);
        (missing, unexpected) = back.load_state_dict(theirs.state_dict());
        Assert.That(missing.Concat(unexpected), Is.Empty, "TorchSharp's → ours");

        var x = torch.randn(2, 8, 5, 5);
        var expected = torch.nn.functional.silu(theirs.forward(x));
        Assert.Multiple(() =>
        {
            Assert.That(TestTensors.Identical(back.weight!, ours.weight!) && TestTensors.Identical(back.bias!, ours.bias!), Is.True, "parameters changed on the way");
            Assert.That(TestTensors.RelativeError(back.forward(x), expected), Is.LessThanOrEqualTo(ParityCheck.Float32Tolerance));
        });
    }

    [Test]
    public void EpsSetterValidatesAndTakesEffect()
    {
        using var scope = torch.NewDisposeScope();
        using var m = new GroupNorm(2, 4);
        var negative = Assert.Throws<ArgumentOutOfRangeException>(() => m.eps = -1e-3);
        var nan = Assert.Throws<ArgumentOutOfRangeException>(() => m.eps = double.NaN);
        Assert.Multiple(() =>
        {
            Assert.That(negative!.ParamName, Is.EqualTo("eps"));
            Assert.That(negative.Message, Does.Contain("eps=-0.001"));
            Assert.That(nan!.ParamName, Is.EqualTo("eps"));
            Assert.That(nan.Message, Does.Contain("eps=nan"));
            Assert.That(m.eps, Is.EqualTo(1e-5), "a rejected value must not be kept");
        });

        // A large eps changes the output measurably, so this shows the new value is the one used.
        m.eps = 0.5;
        var x = torch.randn(2, 4, 3);
        var expected = torch.nn.functional.group_norm(x, 2, torch.ones(4), torch.zeros(4), eps: 0.5);
        Assert.Multiple(() =>
        {
            Assert.That(m.eps, Is.EqualTo(0.5));
            Assert.That(TestTensors.RelativeError(m.forward(x), expected), Is.LessThanOrEqualTo(ParityCheck.Float32Tolerance));
        });
    }

    [Test]
    public void TrainAndEvalGiveTheSameOutput()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(63);
        using var m = new GroupNorm(4, 8);
        using (torch.no_grad()) m.bias!.normal_();
        var x = torch.randn(2, 8, 5, 5);
        m.train();
        var trained = m.forward(x);
        m.eval();
        var evaluated = m.forward(x);
        Assert.That(TestTensors.Identical(trained, evaluated), Is.True);
    }

    [Test]
    public void TrainsInsideSequentialWithConvolution()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(64);
        var norm = new GroupNorm(4, 8);
        using var model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding: 1), norm, torch.nn.ReLU());
        using var optimizer = torch.optim.SGD(model.parameters(), 0.1);
        var before = norm.weight!.detach().clone();

        var x = torch.randn(4, 3, 8, 8);
        var target = torch.randn(4, 8, 8, 8);
        optimizer.zero_grad();
        var loss = torch.nn.functional.mse_loss(model.forward(x), target);
        loss.backward();
        optimizer.step();

        Assert.Multiple(() =>
        {
            Assert.That(model.parameters().Count(), Is.EqualTo(4), "conv weight and bias, norm weight and bias");
            Assert.That(norm.weight!.grad, Is.Not.Null);
            Assert.That(TestTensors.Identical(norm.weight!, before), Is.False, "the optimizer step did not change the weight");
        });
    }
}
