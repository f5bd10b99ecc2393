using System;
using System.Linq;
using GroupNormalization.Conversion;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Conversion;

/// <summary>BatchNormConversionOptions.fuse_activations: a norm and the SiLU/ReLU after it become one layer.</summary>
public sealed class ActivationFoldingTests
{
    private static readonly BatchNormConversionOptions Fuse = new() { num_groups = 4, fuse_activations = true };
    private static readonly BatchNormConversionOptions Plain = new() { num_groups = 4 };

    // Float64 so that "equal" can mean 1e-12: the fused kernel and silu/relu after the plain kernel round differently only at the last bits.
    private const ScalarType F64 = ScalarType.Float64;

    private static Sequential ConvNormAct(Func<nn.Module<Tensor, Tensor>> norm, nn.Module<Tensor, Tensor> activation, long seed = 7)
    {
        torch.manual_seed(seed);
        return nn.Sequential(
            ("conv", nn.Conv2d(3, 8, 3, padding: 1, dtype: F64)),
            ("norm", norm()),
            ("act", activation),
            ("out", nn.Conv2d(8, 2, 1, dtype: F64)));
    }

    private static GroupNorm OurNorm()
    {
        var gn = new GroupNorm(4, 8, eps: 1e-3, dtype: F64);
        RandomizeAffine(gn.weight!, gn.bias!);
        return gn;
    }

    private static TorchSharp.Modules.GroupNorm TheirNorm()
    {
        // TorchSharp's GroupNorm leaves weight and bias uninitialized.
        var gn = nn.GroupNorm(2, 8, eps: 1e-4, dtype: F64);
        RandomizeAffine(gn.weight, gn.bias!);
        return gn;
    }

    private static BatchNorm2d BatchNorm()
    {
        var bn = nn.BatchNorm2d(8, eps: 1e-3, dtype: F64);
        RandomizeAffine(bn.weight, bn.bias!);
        return bn;
    }

    private static void RandomizeAffine(Parameter weight, Parameter bias) => ConversionAssert.RandomizeAffine(weight, bias);

    // Forward, and the gradient of every parameter by name, of both models on the same input.
    private static void AssertSameNumerics(nn.Module<Tensor, Tensor> expected, nn.Module<Tensor, Tensor> actual) =>
        ConversionAssert.SameNumerics(expected, actual);

    private static string[] Keys(nn.Module module) => ConversionAssert.Keys(module);

    [TestCase(false)]
    [TestCase(true)]
    public void BatchNormThenReLUFoldsAndMatchesPlainConversion(bool inplace)
    {
        using var scope = NewDisposeScope();
        using var plain = ConvNormAct(BatchNorm, nn.ReLU(inplace));
        using var fused = ConvNormAct(BatchNorm, nn.ReLU(inplace));
        BatchNormConverter.Convert(plain, Plain);
        var report = BatchNormConverter.Convert(fused, Fuse);

        Assert.That(report.Layers.Single(), Is.EqualTo(new ConvertedLayer("norm", "BatchNorm2d", 8, 4, Activation.ReLU, "act")));
        Assert.That(report.Folded, Is.EqualTo(report.Layers));
        var gn = (GroupNorm)fused[1];
        Assert.That((gn.activation, gn.num_groups, gn.eps), Is.EqualTo((Activation.ReLU, 4L, 1e-3)));
        Assert.That(fused[2], Is.InstanceOf<Identity>());
        Assert.That(Keys(fused), Is.EqualTo(Keys(plain)));
        AssertSameNumerics(plain, fused);
    }

    // Exact GELU (approximate: none, the default) has a fused kernel; tolerance 1e-9 leaves room for the kernel's erf.
    [TestCase(Activation.SiLU, false)]
    [TestCase(Activation.SiLU, true)]
    [TestCase(Activation.GELU, false)]
    [TestCase(Activation.GELU, true)]
    public void BatchNormThenSmoothActivationFoldsAndMatchesPlainConversion(Activation activation, bool inplace)
    {
        using var scope = NewDisposeScope();
        nn.Module<Tensor, Tensor> Act() => activation == Activation.SiLU ? nn.SiLU(inplace) : nn.GELU(inplace);
        using var plain = ConvNormAct(BatchNorm, Act());
        using var fused = ConvNormAct(BatchNorm, Act());
        BatchNormConverter.Convert(plain, Plain);
        var report = BatchNormConverter.Convert(fused, Fuse);

        Assert.That(report.Folded.Single(), Is.EqualTo(new ConvertedLayer("norm", "BatchNorm2d", 8, 4, activation, "act")));
        Assert.That(report.NotFused, Is.Empty);
        Assert.That(((GroupNorm)fused[1]).activation, Is.EqualTo(activation));
        Assert.That(fused[2], Is.InstanceOf<Identity>());
        ConversionAssert.SameNumerics(plain, fused, tolerance: activation == Activation.GELU ? 1e-9 : 1e-12);
    }

    [Test]
    public void OurGroupNormThenSiLUFoldsAndMatchesTheUnconvertedModel()
    {
        using var scope = NewDisposeScope();
        using var original = ConvNormAct(OurNorm, nn.SiLU());
        using var fused = ConvNormAct(OurNorm, nn.SiLU());
        var keysBefore = Keys(fused);
        var report = BatchNormConverter.Convert(fused, Fuse);

        Assert.That(report.Layers.Single(), Is.EqualTo(new ConvertedLayer("norm", "GroupNorm", 8, 4, Activation.SiLU, "act")));
        var gn = (GroupNorm)fused[1];
        Assert.That((gn.activation, gn.num_groups, gn.eps, gn.affine), Is.EqualTo((Activation.SiLU, 4L, 1e-3, true)));
        Assert.That(Keys(fused), Is.EqualTo(keysBefore));
        AssertSameNumerics(original, fused);
    }

    [Test]
    public void TorchSharpGroupNormThenSiLUFoldsAndMatchesTheUnconvertedModel()
    {
        using var scope = NewDisposeScope();
        using var original = ConvNormAct(TheirNorm, nn.SiLU());
        using var fused = ConvNormAct(TheirNorm, nn.SiLU());
        var keysBefore = Keys(fused);
        var report = BatchNormConverter.Convert(fused, Fuse);

        Assert.That(report.Layers.Single(), Is.EqualTo(new ConvertedLayer("norm", "TorchSharp.Modules.GroupNorm", 8, 2, Activation.SiLU, "act")));
        var gn = (GroupNorm)fused[1];
        Assert.That((gn.activation, gn.num_groups, gn.eps, gn.affine), Is.EqualTo((Activation.SiLU, 2L, 1e-4, true)));
        Assert.That(Keys(fused), Is.EqualTo(keysBefore));
        AssertSameNumerics(original, fused);
    }

    [Test]
    public void OurGroupNormWithoutAffineThenReLUFolds()
    {
        using var scope = NewDisposeScope();
        using var original = ConvNormAct(() => new GroupNorm(2, 8, affine: false, dtype: F64), nn.ReLU());
        using var fused = ConvNormAct(() => new GroupNorm(2, 8, affine: false, dtype: F64), nn.ReLU());
        BatchNormConverter.Convert(fused, Fuse);

        var gn = (GroupNorm)fused[1];
        Assert.That((gn.activation, gn.affine, gn.weight), Is.EqualTo((Activation.ReLU, false, (Parameter?)null)));
        AssertSameNumerics(original, fused);
    }

    [Test]
    public void FoldKeepsFrozenParametersAndTrainingMode()
    {
        using var scope = NewDisposeScope();
        var norm = OurNorm();
        norm.weight!.requires_grad = false;
        using var model = nn.Sequential(("norm", norm), ("act", nn.SiLU()));
        model.eval();
        BatchNormConverter.Convert(model, Fuse);

        var gn = (GroupNorm)model[0];
        Assert.That(gn.activation, Is.EqualTo(Activation.SiLU));
        Assert.That((gn.weight!.requires_grad, gn.bias!.requires_grad, gn.training), Is.EqualTo((false, true, false)));
    }

    [Test]
    public void FoldsInsideNestedSequentialsAndReportsDottedNames()
    {
        using var scope = NewDisposeScope();
        using var model = nn.Sequential(
            ("block", nn.Sequential(("conv", nn.Conv2d(3, 8, 3, padding: 1, dtype: F64)), ("bn", BatchNorm()), ("relu", nn.ReLU()))),
            ("head", nn.Sequential(("inner", nn.Sequential(("gn", OurNorm()), ("silu", nn.SiLU()))))));
        var report = BatchNormConverter.Convert(model, Fuse);

        Assert.That(report.Folded.Select(l => (l.name, l.activation, l.activation_name)), Is.EqualTo(new[]
        {
            ("block.bn", Activation.ReLU, "block.relu"), ("head.inner.gn", Activation.SiLU, "head.inner.silu"),
        }));
        Assert.That(model.modules().OfType<ReLU>().Concat<nn.Module>(model.modules().OfType<SiLU>()), Is.Empty);
        Assert.That(model.modules().OfType<Identity>().Count(), Is.EqualTo(2));
        Assert.That(model.modules().OfType<GroupNorm>().Select(g => g.activation), Is.EquivalentTo(new[] { Activation.ReLU, Activation.SiLU }));
        Assert.That(model.call(torch.randn(new long[] { 2, 3, 4, 4 }, dtype: F64)).shape, Is.EqualTo(new long[] { 2, 8, 4, 4 }));
    }

    [Test]
    public void NormNotFollowedByAnActivationStaysUnfused()
    {
        using var scope = NewDisposeScope();
        var gn = OurNorm();
        var theirs = TheirNorm();
        using var model = nn.Sequential(
            ("bn", BatchNorm()), ("conv", nn.Conv2d(8, 8, 1, dtype: F64)), ("relu", nn.ReLU()),
            ("gn", gn), ("gelu", nn.GELU(GELU.Approximate.tanh)), ("theirs", theirs), ("sigmoid", nn.Sigmoid()), ("last", OurNorm()));
        var report = BatchNormConverter.Convert(model, Fuse);

        Assert.That(report.Layers.Single(), Is.EqualTo(new ConvertedLayer("bn", "BatchNorm2d", 8, 4)));
        Assert.That(report.Folded, Is.Empty);
        Assert.That(report.NotFused, Is.EqualTo(new[]
        {
            new NotFusedPair("gn", "GroupNorm", "gelu", "GELU", "GELU with approximate=tanh has no fused kernel (GroupNorm fuses the exact GELU only)"),
            new NotFusedPair("theirs", "TorchSharp.Modules.GroupNorm", "sigmoid", "Sigmoid",
                "GroupNorm has no fused kernel for Sigmoid (it fuses SiLU, ReLU and exact GELU)"),
        }));
        Assert.That(((GroupNorm)model[0]).activation, Is.EqualTo(Activation.None));
        Assert.That(model[2], Is.InstanceOf<ReLU>());
        Assert.That(model[3], Is.SameAs(gn));
        Assert.That(model[4], Is.InstanceOf<GELU>());
        Assert.That(model[5], Is.SameAs(theirs));
        Assert.That(((GroupNorm)model[7]).activation, Is.EqualTo(Activation.None));
    }

    [Test]
    public void ActivationNotPrecededByANormStays()
    {
        using var scope = NewDisposeScope();
        var relu = nn.ReLU();
        var silu = nn.SiLU();
        using var model = nn.Sequential(("relu", relu), ("conv", nn.Conv2d(3, 8, 1, dtype: F64)), ("silu", silu), ("gn", OurNorm()));
        var report = BatchNormConverter.Convert(model, Fuse);

        Assert.That(report.Count, Is.Zero);
        Assert.That(model[0], Is.SameAs(relu));
        Assert.That(model[2], Is.SameAs(silu));
        Assert.That(((GroupNorm)model[3]).activation, Is.EqualTo(Activation.None));
    }

    [Test]
    public void OptionOffChangesNothingBeyondBatchNormConversion()
    {
        using var scope = NewDisposeScope();
        var gn = OurNorm();
        var theirs = TheirNorm();
        var relu = nn.ReLU();
        var silu1 = nn.SiLU();
        var silu2 = nn.SiLU();
        using var model = nn.Sequential(("bn", BatchNorm()), ("relu", relu), ("gn", gn), ("silu1", silu1), ("theirs", theirs), ("silu2", silu2));
        var report = BatchNormConverter.Convert(model, Plain);

        Assert.That(new BatchNormConversionOptions().fuse_activations, Is.False);
        Assert.That(report.Layers.Single(), Is.EqualTo(new ConvertedLayer("bn", "BatchNorm2d", 8, 4)));
        Assert.That(report.Folded, Is.Empty);
        Assert.That(((GroupNorm)model[0]).activation, Is.EqualTo(Activation.None));
        Assert.That(new[] { model[1], model[2], model[3], model[4], model[5] }, Is.EqualTo(new nn.Module[] { relu, gn, silu1, theirs, silu2 }));
        Assert.That(report.NotFused.Select(p => (p.name, p.activation_name, p.reason)), Is.EqualTo(new[]
        {
            ("bn", "relu", "fuse_activations is off"), ("gn", "silu1", "fuse_activations is off"), ("theirs", "silu2", "fuse_activations is off"),
        }));
    }

    [Test]
    public void StateDictKeysStayAndOldCheckpointsLoad()
    {
        using var scope = NewDisposeScope();
        Sequential Build() => nn.Sequential(
            ("0", nn.Conv2d(3, 8, 3, padding: 1, dtype: F64)), ("1", OurNorm()), ("2", nn.SiLU()),
            ("3", nn.Conv2d(8, 8, 3, padding: 1, dtype: F64)), ("4", TheirNorm()), ("5", nn.ReLU()),
            ("6", nn.Conv2d(8, 4, 1, dtype: F64)));
        using var original = Build();
        var checkpoint = original.state_dict();
        using var model = Build();
        BatchNormConverter.Convert(model, Fuse);

        Assert.That(model.modules().OfType<GroupNorm>().Select(g => g.activation), Is.EqualTo(new[] { Activation.SiLU, Activation.ReLU }));
        Assert.That(Keys(model), Is.EqualTo(checkpoint.Keys.ToArray()));
        var (missing, unexpected) = model.load_state_dict(checkpoint, strict: true);
        Assert.That(missing.Concat(unexpected), Is.Empty);
        AssertSameNumerics(original, model);
    }

    [Test]
    public void NormSharedBetweenTwoPlacesIsNotFolded()
    {
        using var scope = NewDisposeScope();
        var shared = OurNorm();
        using var model = nn.Sequential(
            ("a", nn.Sequential(("gn", shared), ("silu", nn.SiLU()))),
            ("b", nn.Sequential(("gn", shared), ("id", nn.Identity()))));
        var report = BatchNormConverter.Convert(model, Fuse);

        Assert.That(report.Count, Is.Zero);
        Assert.That(((Sequential)model[0])[0], Is.SameAs(shared));
        Assert.That(((Sequential)model[0])[1], Is.InstanceOf<SiLU>());
        Assert.That(report.NotFused.Single(), Is.EqualTo(new NotFusedPair("a.gn", "GroupNorm", "a.silu", "SiLU",
            "the norm is held in 2 places, and fusing the activation into it would apply the activation in the others too")));
    }

    [Test]
    public void ActivationSharedWithAnUnfoldedPlaceStaysUsable()
    {
        using var scope = NewDisposeScope();
        var relu = nn.ReLU();
        using var model = nn.Sequential(
            ("a", nn.Sequential(("gn", OurNorm()), ("relu", relu))),
            ("b", nn.Sequential(("conv", nn.Conv2d(8, 8, 1, dtype: F64)), ("relu", relu))));
        BatchNormConverter.Convert(model, Fuse);

        Assert.That(((Sequential)model[0])[1], Is.InstanceOf<Identity>());
        Assert.That(((Sequential)model[1])[1], Is.SameAs(relu));
        var y = model.call(torch.randn(new long[] { 1, 8, 3, 3 }, dtype: F64));
        Assert.That(y.min().item<double>(), Is.GreaterThanOrEqualTo(0));
    }

    [Test]
    public void SequentialWithItsOwnForwardIsNotFolded()
    {
        using var scope = NewDisposeScope();
        var gn = OurNorm();
        using var model = nn.Sequential(("rev", new Reversed(("gn", gn), ("silu", nn.SiLU()))));
        var report = BatchNormConverter.Convert(model, Fuse);

        Assert.That(report.Count, Is.Zero);
        Assert.That(((Sequential)model[0])[0], Is.SameAs(gn));
        var pair = report.NotFused.Single();
        Assert.That((pair.name, pair.activation_name), Is.EqualTo(("rev.gn", "rev.silu")));
        Assert.That(pair.reason, Does.StartWith("`Reversed` overrides Sequential's forward, so the order of its items is not known; if forward applies the SiLU"));
    }

    [Test]
    public void FoldedNormIsDisposedUnlessAskedNotTo()
    {
        using var scope = NewDisposeScope();
        var disposed = OurNorm();
        using var model = nn.Sequential(("gn", disposed), ("relu", nn.ReLU()));
        BatchNormConverter.Convert(model, Fuse);
        var kept = OurNorm();
        using var other = nn.Sequential(("gn", kept), ("relu", nn.ReLU()));
        BatchNormConverter.Convert(other, new BatchNormConversionOptions { fuse_activations = true, dispose_replaced = false });

        Assert.That(disposed.weight!.IsInvalid, Is.True);
        Assert.That(kept.weight!.IsInvalid, Is.False);
    }
}
