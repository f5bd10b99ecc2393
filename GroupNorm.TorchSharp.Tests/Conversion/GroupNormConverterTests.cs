using System;
using System.Collections.Generic;
using System.Linq;
using GroupNormalization.Conversion;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static GroupNormalization.Tests.Conversion.ConversionAssert;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Conversion;

/// <summary>GroupNormConverter: TorchSharp's nn.GroupNorm becomes ours in every place, with the same numbers.</summary>
public sealed class GroupNormConverterTests
{
    private const string Theirs = "TorchSharp.Modules.GroupNorm";
    private const ScalarType F64 = ScalarType.Float64;
    private static readonly GroupNormConversionOptions Fuse = new() { fuse_activations = true };
    // Walk order: the registry's, depth first (RegisterComponents registers fields in declaration order, the auto-property's too).
    private static readonly string[] EveryPlaceNames = ["norm", "body.gn", "list.0", "dict.a", "<Head>k__BackingField", "extra0"];

    // Every place a parent can hold a layer: a Sequential, Module<Tensor, Tensor> fields (one an auto-property),
    // a ModuleList, a ModuleDict, and a List in a field whose item is registered by hand. Forward reads the fields.
    private sealed class EveryPlaceNet : nn.Module<Tensor, Tensor>
    {
        private readonly nn.Module<Tensor, Tensor> conv;
        private readonly nn.Module<Tensor, Tensor> norm;
        private readonly Sequential body;
        private readonly ModuleList<nn.Module<Tensor, Tensor>> list;
        private readonly ModuleDict<nn.Module<Tensor, Tensor>> dict;
        private readonly List<nn.Module<Tensor, Tensor>> extra;

        public EveryPlaceNet(ScalarType dtype) : base(nameof(EveryPlaceNet))
        {
            conv = nn.Conv2d(3, 8, 3, padding: 1, dtype: dtype);
            norm = TheirNorm(4, 8, dtype: dtype);
            body = nn.Sequential(("conv", nn.Conv2d(8, 8, 3, padding: 1, dtype: dtype)), ("gn", TheirNorm(2, 8, eps: 1e-3, dtype: dtype)), ("relu", nn.ReLU()));
            list = nn.ModuleList<nn.Module<Tensor, Tensor>>(TheirNorm(8, 8, dtype: dtype), nn.Conv2d(8, 8, 1, dtype: dtype));
            dict = nn.ModuleDict<nn.Module<Tensor, Tensor>>(("a", TheirNorm(1, 8, dtype: dtype)), ("b", nn.Identity()));
            extra = [TheirNorm(4, 8, eps: 1e-4, dtype: dtype)];
            Head = TheirNorm(2, 8, eps: 1e-2, dtype: dtype);
            RegisterComponents();
            register_module("extra0", extra[0]);
        }

        public nn.Module<Tensor, Tensor> Head { get; }

        // Everything forward calls as a norm, read from where forward reads it.
        public nn.Module[] Norms => [norm, (nn.Module)body[1], list[0], dict["a"], extra[0], Head];

        public override Tensor forward(Tensor input)
        {
            var x = body.call(norm.call(conv.call(input)));
            x = list[1].call(list[0].call(x));
            return Head.call(extra[0].call(dict["a"].call(x)));
        }
    }

    private sealed class SharingNet : nn.Module<Tensor, Tensor>
    {
        private readonly nn.Module<Tensor, Tensor> norm;
        private readonly Sequential a;
        private readonly Sequential b;

        public SharingNet(nn.Module<Tensor, Tensor> shared) : base(nameof(SharingNet))
        {
            norm = shared;
            a = nn.Sequential(("gn", shared), ("relu", nn.ReLU()));
            b = nn.Sequential(("conv", nn.Conv2d(8, 8, 1, dtype: F64)), ("gn", shared));
            RegisterComponents();
        }

        public nn.Module[] Places => [norm, (nn.Module)a[0], (nn.Module)b[1]];

        public override Tensor forward(Tensor input) => b.call(a.call(norm.call(input)));
    }

    // 1e-6 in float32, as the parity suite's bound for one layer; float64 agrees to rounding.
    [TestCase(ScalarType.Float32, 1e-6)]
    [TestCase(ScalarType.Float64, 1e-12)]
    public void SwapsEveryPlaceKeepingKeysDtypeAndOutputs(ScalarType dtype, double tolerance)
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(3);
        using var model = new EveryPlaceNet(dtype);
        var x = torch.randn(new long[] { 2, 3, 5, 5 }, dtype: dtype);
        var before = model.call(x).detach();
        var keys = Keys(model);

        var report = GroupNormConverter.Convert(model);

        Assert.That(model.modules().OfType<TorchSharp.Modules.GroupNorm>(), Is.Empty);
        Assert.That(model.Norms, Is.All.InstanceOf<GroupNorm>());
        Assert.That(model.Norms.Cast<GroupNorm>().Select(g => (g.num_groups, g.eps)), Is.EqualTo(new[]
        {
            (4L, 1e-5), (2L, 1e-3), (8L, 1e-5), (1L, 1e-5), (4L, 1e-4), (2L, 1e-2),
        }));
        Assert.That(model.parameters().Select(p => p.dtype), Is.All.EqualTo(dtype));
        Assert.That(Keys(model), Is.EqualTo(keys));
        Assert.That(report.Count, Is.EqualTo(6));
        Assert.That(report.Layers.Select(l => l.kind), Is.All.EqualTo(Theirs));
        Assert.That(report.Layers.Select(l => l.name), Is.EqualTo(EveryPlaceNames));
        Assert.That((report.Folded, report.NotSwapped), Is.EqualTo((Array.Empty<ConvertedLayer>(), Array.Empty<NotSwappedLayer>())));
        Assert.That(report.NotFused.Single(), Is.EqualTo(new NotFusedPair("body.gn", Theirs, "body.relu", "ReLU", "fuse_activations is off")));

        var after = model.call(x);
        Assert.That(after.allclose(before, rtol: tolerance, atol: tolerance), Is.True, $"output differs by {(after - before).abs().max().ToDouble()}");
    }

    [Test]
    public void KeepsGroupsEpsValuesRequiresGradAndTrainingMode()
    {
        using var scope = NewDisposeScope();
        var frozen = TheirNorm(4, 8, eps: 1e-3);
        frozen.weight.requires_grad = false;
        frozen.eval();
        var trained = TheirNorm(2, 8);
        trained.bias!.requires_grad = false;
        var (weight, bias) = (frozen.weight.detach().clone(), frozen.bias!.detach().clone());
        using var model = nn.Sequential(("frozen", frozen), ("trained", trained));

        var report = GroupNormConverter.Convert(model, new GroupNormConversionOptions { dispose_replaced = false });

        Assert.That(report.Layers, Is.EqualTo(new[] { new ConvertedLayer("frozen", Theirs, 8, 4), new ConvertedLayer("trained", Theirs, 8, 2) }));
        var a = (GroupNorm)model[0];
        var b = (GroupNorm)model[1];
        Assert.That((a.num_groups, a.num_channels, a.eps, a.affine, a.activation), Is.EqualTo((4L, 8L, 1e-3, true, Activation.None)));
        Assert.That((a.weight!.requires_grad, a.bias!.requires_grad, a.training), Is.EqualTo((false, true, false)));
        Assert.That((b.weight!.requires_grad, b.bias!.requires_grad, b.training), Is.EqualTo((true, false, true)));
        Assert.That(a.weight.allclose(weight, rtol: 0, atol: 0) && a.bias.allclose(bias, rtol: 0, atol: 0), Is.True);
        Assert.That(b.weight.allclose(trained.weight, rtol: 0, atol: 0) && b.bias.allclose(trained.bias!, rtol: 0, atol: 0), Is.True);
        Assert.That((a.weight.dtype, a.weight.device_type), Is.EqualTo((F64, DeviceType.CPU)));
    }

    [Test]
    public void SharedLayerBecomesOneSharedReplacement()
    {
        using var scope = NewDisposeScope();
        var shared = TheirNorm(2, 8);
        using var model = new SharingNet(shared);
        var x = torch.randn(new long[] { 2, 8, 4, 4 }, dtype: F64);
        var before = model.call(x).detach();
        var keys = Keys(model);

        var report = GroupNormConverter.Convert(model);

        Assert.That(report.Layers.Single(), Is.EqualTo(new ConvertedLayer("norm", Theirs, 8, 2)));
        var replacement = model.Places[0];
        Assert.That(replacement, Is.InstanceOf<GroupNorm>());
        Assert.That(model.Places, Is.All.SameAs(replacement));
        Assert.That(Keys(model), Is.EqualTo(keys));
        Assert.That(model.call(x).allclose(before, rtol: 1e-12, atol: 1e-12), Is.True);
        Assert.That(shared.weight.IsInvalid, Is.True, "the replaced layer is disposed");
    }

    private static Sequential ConvNormAct(nn.Module<Tensor, Tensor> activation)
    {
        torch.manual_seed(11);
        return nn.Sequential(
            ("conv", nn.Conv2d(3, 8, 3, padding: 1, dtype: F64)),
            ("norm", TheirNorm(2, 8, eps: 1e-4)),
            ("act", activation),
            ("out", nn.Conv2d(8, 2, 1, dtype: F64)));
    }

    // GELU's tolerance leaves room for the fused kernel's erf; SiLU and ReLU agree to rounding.
    private static readonly object[] FusableActivations =
    [
        new object[] { Activation.SiLU, 1e-12 },
        new object[] { Activation.ReLU, 1e-12 },
        new object[] { Activation.GELU, 1e-9 },
    ];

    private static nn.Module<Tensor, Tensor> ActivationModule(Activation activation) => activation switch
    {
        Activation.SiLU => nn.SiLU(),
        Activation.ReLU => nn.ReLU(),
        Activation.GELU => nn.GELU(),
        _ => throw new ArgumentOutOfRangeException(nameof(activation)),
    };

    [TestCaseSource(nameof(FusableActivations))]
    public void FusesTheActivationAfterItAndMatchesTheUnconvertedModel(Activation activation, double tolerance)
    {
        using var scope = NewDisposeScope();
        using var original = ConvNormAct(ActivationModule(activation));
        using var fused = ConvNormAct(ActivationModule(activation));
        var keys = Keys(fused);

        var report = GroupNormConverter.Convert(fused, Fuse);

        Assert.That(report.Layers.Single(), Is.EqualTo(new ConvertedLayer("norm", Theirs, 8, 2, activation, "act")));
        Assert.That(report.Folded, Is.EqualTo(report.Layers));
        Assert.That(report.NotFused, Is.Empty);
        var gn = (GroupNorm)fused[1];
        Assert.That((gn.activation, gn.num_groups, gn.eps), Is.EqualTo((activation, 2L, 1e-4)));
        Assert.That(fused[2], Is.InstanceOf<Identity>());
        Assert.That(Keys(fused), Is.EqualTo(keys));
        SameNumerics(original, fused, tolerance);
    }

    [Test]
    public void FusesOurGroupNormToo()
    {
        using var scope = NewDisposeScope();
        var ours = new GroupNorm(4, 8, dtype: F64);
        using var model = nn.Sequential(("gn", ours), ("relu", nn.ReLU()));

        var report = GroupNormConverter.Convert(model, Fuse);

        Assert.That(report.Layers.Single(), Is.EqualTo(new ConvertedLayer("gn", "GroupNorm", 8, 4, Activation.ReLU, "relu")));
        Assert.That(((GroupNorm)model[0]).activation, Is.EqualTo(Activation.ReLU));
    }

    [Test]
    public void ReplacedLayersAreDisposedUnlessAskedNotTo()
    {
        using var scope = NewDisposeScope();
        var disposed = TheirNorm(2, 8);
        using var model = nn.Sequential(("gn", disposed));
        GroupNormConverter.Convert(model);
        var kept = TheirNorm(2, 8);
        using var other = nn.Sequential(("gn", kept));
        GroupNormConverter.Convert(other, new GroupNormConversionOptions { dispose_replaced = false });

        Assert.That(new GroupNormConversionOptions().dispose_replaced, Is.True);
        Assert.That(disposed.weight.IsInvalid, Is.True);
        Assert.That(kept.weight.IsInvalid, Is.False);
        Assert.That(other[0], Is.InstanceOf<GroupNorm>());
    }

    [Test]
    public void NullModelIsRejected()
    {
        Assert.That(() => GroupNormConverter.Convert(null!), Throws.ArgumentNullException.With.Property("ParamName").EqualTo("model"));
    }

    [Test]
    public void ModelThatIsItselfAGroupNormIsRejected()
    {
        using var theirs = nn.GroupNorm(2, 8);
        using var ours = new GroupNorm(2, 8);
        Assert.That(() => GroupNormConverter.Convert(theirs), Throws.ArgumentException
            .With.Property("ParamName").EqualTo("model").And.Message.Contains("TorchSharp.Modules.GroupNorm").And.Message.Contains("wrap it"));
        Assert.That(() => GroupNormConverter.Convert(ours), Throws.ArgumentException
            .With.Property("ParamName").EqualTo("model").And.Message.Contains("GroupNorm").And.Message.Contains("wrap it"));
        Assert.That(theirs.weight.IsInvalid, Is.False);
    }
}
