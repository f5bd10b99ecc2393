using System;
using System.Linq;
using GroupNormalization.Conversion;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Conversion;

public sealed class BatchNormConverterTests
{
    private static readonly string[] ConvertedNames = ["bn", "head.inner.bn"];
    private static readonly string[] ChildNames = ["conv", "bn", "head"];

    // Forward reads the C# fields, not the registry: the converter must update both.
    private sealed class FieldNet : nn.Module<Tensor, Tensor>
    {
        private readonly nn.Module<Tensor, Tensor> conv;
        private readonly nn.Module<Tensor, Tensor> bn;
        private readonly Sequential head;

        public FieldNet(Func<long, nn.Module<Tensor, Tensor>> norm, ScalarType dtype = ScalarType.Float32) : base(nameof(FieldNet))
        {
            conv = nn.Conv2d(3, 8, 3, padding: 1, dtype: dtype);
            bn = norm(8);
            head = nn.Sequential(
                ("inner", nn.Sequential(("conv", nn.Conv2d(8, 12, 1, dtype: dtype)), ("bn", norm(12)))),
                ("relu", nn.ReLU()));
            RegisterComponents();
        }

        public override Tensor forward(Tensor input) => head.call(bn.call(conv.call(input)));
    }

    private sealed class MixedNet : nn.Module<Tensor, Tensor>
    {
        private readonly nn.Module<Tensor, Tensor> bn1d;
        private readonly nn.Module<Tensor, Tensor> bn3d;
        private readonly ModuleList<nn.Module<Tensor, Tensor>> list;

        public MixedNet(ScalarType dtype) : base(nameof(MixedNet))
        {
            bn1d = nn.BatchNorm1d(6, dtype: dtype);
            bn3d = nn.BatchNorm3d(4, dtype: dtype);
            list = nn.ModuleList<nn.Module<Tensor, Tensor>>(nn.BatchNorm2d(10, dtype: dtype), nn.Identity());
            RegisterComponents();
        }

        public Tensor Forward1d(Tensor x) => bn1d.call(x);
        public Tensor Forward3d(Tensor x) => bn3d.call(x);
        public Tensor Forward2d(Tensor x) => list[0].call(x);
        public override Tensor forward(Tensor input) => input;
        public nn.Module<Tensor, Tensor> ListItem(int index) => list[index];
    }

    private sealed class TypedFieldNet : nn.Module<Tensor, Tensor>
    {
        private readonly BatchNorm2d bn = nn.BatchNorm2d(4);

        public TypedFieldNet() : base(nameof(TypedFieldNet)) => RegisterComponents();

        public override Tensor forward(Tensor input) => bn.call(input);
    }

    [Test]
    public void ReplacesFieldsRegistryAndNestedSequentials()
    {
        using var scope = NewDisposeScope();
        using var model = new FieldNet(c => nn.BatchNorm2d(c));
        var report = BatchNormConverter.Convert(model, new BatchNormConversionOptions { num_groups = 4 });

        Assert.That(report.Count, Is.EqualTo(2));
        Assert.That(report.Layers.Select(l => l.name), Is.EqualTo(ConvertedNames));
        Assert.That(model.modules().OfType<BatchNorm>(), Is.Empty);
        Assert.That(model.modules().OfType<GroupNorm>().Count(), Is.EqualTo(2));
        Assert.That(model.state_dict().Keys.Where(k => k.Contains("running", StringComparison.Ordinal)), Is.Empty);
        Assert.That(model.named_children().Select(c => c.name), Is.EqualTo(ChildNames));
    }

    [Test]
    public void ForwardAfterConversionEqualsModelBuiltWithGroupNorm()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(1);
        using var converted = new FieldNet(c => nn.BatchNorm2d(c));
        using var direct = new FieldNet(c => new GroupNorm(4, c));
        BatchNormConverter.Convert(converted, new BatchNormConversionOptions { num_groups = 4 });
        // Same weights everywhere: the state-dict keys of both models must now match one to one.
        direct.load_state_dict(converted.state_dict());

        var x = torch.randn(3, 3, 6, 6);
        var expected = direct.call(x);
        var actual = converted.call(x);
        Assert.That(actual.allclose(expected, rtol: 1e-5, atol: 1e-6), Is.True);
    }

    [Test]
    public void CopiesAffineParametersAndEps()
    {
        using var scope = NewDisposeScope();
        var bn = nn.BatchNorm2d(6, eps: 1e-3);
        using (torch.no_grad())
        {
            bn.weight.copy_(torch.arange(6, dtype: ScalarType.Float32));
            bn.bias!.copy_(torch.arange(6, dtype: ScalarType.Float32) * -1);
        }
        using var model = nn.Sequential(("bn", bn));
        BatchNormConverter.Convert(model, new BatchNormConversionOptions { num_groups = 3 });

        var gn = (GroupNorm)model[0];
        Assert.That(gn.eps, Is.EqualTo(1e-3));
        Assert.That(gn.num_groups, Is.EqualTo(3));
        Assert.That(gn.weight!.data<float>().ToArray(), Is.EqualTo(new float[] { 0, 1, 2, 3, 4, 5 }));
        Assert.That(gn.bias!.data<float>().ToArray(), Is.EqualTo(new float[] { 0, -1, -2, -3, -4, -5 }));
    }

    [Test]
    public void ConvertsBatchNorm1d2d3dKeepingFloat64()
    {
        using var scope = NewDisposeScope();
        using var model = new MixedNet(ScalarType.Float64);
        var report = BatchNormConverter.Convert(model, new BatchNormConversionOptions { num_groups = 4 });

        Assert.That(report.Layers.Select(l => (l.kind, l.num_channels, l.num_groups)), Is.EquivalentTo(new[]
        {
            ("BatchNorm1d", 6L, 3L), ("BatchNorm3d", 4L, 4L), ("BatchNorm2d", 10L, 2L),
        }));
        Assert.That(model.parameters().Select(p => p.dtype), Is.All.EqualTo(ScalarType.Float64));
        Assert.That(model.ListItem(0), Is.InstanceOf<GroupNorm>());

        var x1 = torch.randn(5, 6, dtype: ScalarType.Float64);
        Assert.That(model.Forward1d(x1).allclose(nn.functional.group_norm(x1, 3, null, null, 1e-5)), Is.True);
        var x2 = torch.randn(2, 10, 3, 3, dtype: ScalarType.Float64);
        Assert.That(model.Forward2d(x2).allclose(nn.functional.group_norm(x2, 2, null, null, 1e-5)), Is.True);
        var x3 = torch.randn(new long[] { 2, 4, 2, 3, 3 }, dtype: ScalarType.Float64);
        var y3 = model.Forward3d(x3);
        Assert.That(y3.dtype, Is.EqualTo(ScalarType.Float64));
        Assert.That(y3.allclose(nn.functional.group_norm(x3, 4, null, null, 1e-5)), Is.True);
    }

    [TestCase(64L, 32L, null, 32L)]
    [TestCase(48L, 32L, null, 24L)]
    [TestCase(16L, 32L, null, 16L)]
    [TestCase(10L, 4L, null, 2L)]
    [TestCase(7L, 4L, null, 1L)]
    [TestCase(64L, 32L, 16L, 4L)]
    [TestCase(48L, 32L, 10L, 4L)]
    [TestCase(8L, 32L, 16L, 1L)]
    public void ChosenGroupsDivideChannels(long channels, long numGroups, long? perGroup, long expected)
    {
        var options = new BatchNormConversionOptions { num_groups = numGroups, channels_per_group = perGroup };
        var g = options.choose_num_groups(channels);
        Assert.That(g, Is.EqualTo(expected));
        Assert.That(channels % g, Is.Zero);
    }

    [Test]
    public void FieldTypedAsBatchNormIsRejectedAndLeftUnchanged()
    {
        using var scope = NewDisposeScope();
        using var model = new TypedFieldNet();
        Assert.That(() => BatchNormConverter.Convert(model), Throws.InvalidOperationException
            .With.Message.Contains("`TypedFieldNet.bn` is declared as `BatchNorm2d`, which cannot hold a `GroupNormalization.GroupNorm`")
            .And.Message.Contains("declare `TypedFieldNet.bn` as `Module<Tensor, Tensor>` (or `GroupNormalization.GroupNorm`)")
            .And.Message.Contains("nothing in the model was changed"));
        Assert.That(model.named_children().Single().module, Is.InstanceOf<BatchNorm2d>());
    }

    [Test]
    public void RootBatchNormIsRejected()
    {
        using var bn = nn.BatchNorm2d(4);
        Assert.That(() => BatchNormConverter.Convert(bn), Throws.ArgumentException);
    }

    [Test]
    public void ConvertsTorchVisionResNet18AndRunsForward()
    {
        using var scope = NewDisposeScope();
        using var model = torchvision.models.resnet18(num_classes: 10);
        var report = BatchNormConverter.Convert(model);

        Assert.That(report.Count, Is.EqualTo(20));
        Assert.That(model.modules().OfType<BatchNorm>(), Is.Empty);
        Assert.That(report.Layers.All(l => l.num_channels % l.num_groups == 0), Is.True);
        Assert.That(report.Layers.Select(l => l.name), Does.Contain("bn1").And.Contain("layer2.0.downsample.1"));
        // Each block's forward calls bn1 → relu1 and bn2 → (add) → relu_: the pairs are reported, not fused.
        Assert.That(report.NotFused.Count, Is.EqualTo(17));
        Assert.That(report.NotFused.Select(p => (p.name, p.activation_name)), Does.Contain(("bn1", "relu")).And.Contain(("layer1.0.bn1", "layer1.0.relu1")));
        Assert.That(report.NotFused[0].reason, Does.StartWith("`ResNet`'s forward calls them, so their order is not visible; " +
            "if forward applies the ReLU right after the norm, fuse by hand: build the norm as our GroupNorm with `activation: Activation.ReLU`"));

        model.train();
        var logits = model.call(torch.randn(2, 3, 32, 32));
        Assert.That(logits.shape, Is.EqualTo(new long[] { 2, 10 }));
        Assert.That(torch.isfinite(logits).all().item<bool>(), Is.True);
        // Batch size 1 in training mode: BatchNorm would refuse (one value per channel); GroupNorm does not care.
        var single = model.call(torch.randn(1, 3, 32, 32));
        Assert.That(single.shape, Is.EqualTo(new long[] { 1, 10 }));
    }
}
