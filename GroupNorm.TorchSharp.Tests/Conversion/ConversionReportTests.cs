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

/// <summary>The report's messages: every reason a pair is not fused or a layer is not swapped, and the summary.</summary>
public sealed class ConversionReportTests
{
    private const string Theirs = "TorchSharp.Modules.GroupNorm";
    private const ScalarType F64 = ScalarType.Float64;
    private static readonly GroupNormConversionOptions Fuse = new() { fuse_activations = true };

    private const string HandFuseSiLU =
        "if forward applies the SiLU right after the norm, fuse by hand: build the norm as our GroupNorm with `activation: Activation.SiLU` " +
        "and delete that SiLU call (keeping it applies SiLU twice)";

    // A VAE ResnetBlock: forward calls norm1, the SiLU, conv1, norm2, the SiLU, conv2, then adds the input.
    private sealed class VaeResnetBlock : nn.Module<Tensor, Tensor>
    {
        private readonly nn.Module<Tensor, Tensor> norm1;
        private readonly nn.Module<Tensor, Tensor> conv1;
        private readonly nn.Module<Tensor, Tensor> norm2;
        private readonly nn.Module<Tensor, Tensor> conv2;
        private readonly nn.Module<Tensor, Tensor> nonlinearity;

        public VaeResnetBlock(nn.Module<Tensor, Tensor>? norm1 = null) : base(nameof(VaeResnetBlock))
        {
            this.norm1 = norm1 ?? TheirNorm(2, 8);
            conv1 = nn.Conv2d(8, 8, 3, padding: 1, dtype: F64);
            norm2 = TheirNorm(4, 8);
            conv2 = nn.Conv2d(8, 8, 3, padding: 1, dtype: F64);
            nonlinearity = nn.SiLU();
            RegisterComponents();
        }

        public override Tensor forward(Tensor input)
        {
            var h = conv1.call(nonlinearity.call(norm1.call(input)));
            return input + conv2.call(nonlinearity.call(norm2.call(h)));
        }
    }

    // The same block written with typed fields: TorchSharp's type for norm1, a wide one for norm2.
    private sealed class VaeBlock : nn.Module<Tensor, Tensor>
    {
        private readonly TorchSharp.Modules.GroupNorm norm1;
        private readonly nn.Module<Tensor, Tensor> norm2;

        public VaeBlock(TorchSharp.Modules.GroupNorm? norm1 = null) : base(nameof(VaeBlock))
        {
            this.norm1 = norm1 ?? TheirNorm(2, 8);
            norm2 = TheirNorm(4, 8);
            RegisterComponents();
        }

        public nn.Module Norm1 => norm1;
        public nn.Module Norm2 => norm2;

        public override Tensor forward(Tensor input) => norm2.call(norm1.call(input));
    }

    private sealed class PropertyBlock : nn.Module<Tensor, Tensor>
    {
        public PropertyBlock() : base(nameof(PropertyBlock))
        {
            Norm = TheirNorm(2, 8);
            RegisterComponents();
        }

        public TorchSharp.Modules.GroupNorm Norm { get; }

        public override Tensor forward(Tensor input) => Norm.call(input);
    }

    private sealed class ListBlock : nn.Module<Tensor, Tensor>
    {
        private readonly List<TorchSharp.Modules.GroupNorm> norms = [TheirNorm(2, 8), TheirNorm(4, 8)];

        public ListBlock() : base(nameof(ListBlock))
        {
            for (int i = 0; i < norms.Count; i++) register_module($"norm{i}", norms[i]);
        }

        public IReadOnlyList<nn.Module> Norms => norms;

        public override Tensor forward(Tensor input) => norms.Aggregate(input, (x, norm) => norm.call(x));
    }

    private sealed class ModuleListBlock : nn.Module<Tensor, Tensor>
    {
        private readonly ModuleList<TorchSharp.Modules.GroupNorm> norms = nn.ModuleList(TheirNorm(2, 8));

        public ModuleListBlock() : base(nameof(ModuleListBlock)) => RegisterComponents();

        public nn.Module Norm => norms[0];

        public override Tensor forward(Tensor input) => norms[0].call(input);
    }

    private sealed class PairsInAModuleList : nn.Module<Tensor, Tensor>
    {
        private readonly ModuleList<nn.Module<Tensor, Tensor>> layers = nn.ModuleList<nn.Module<Tensor, Tensor>>(TheirNorm(2, 8), nn.SiLU());

        public PairsInAModuleList() : base(nameof(PairsInAModuleList)) => RegisterComponents();

        public override Tensor forward(Tensor input) => layers[1].call(layers[0].call(input));
    }

    private static Tensor Input() => torch.randn(new long[] { 2, 8, 4, 4 }, dtype: F64);

    // ---------------------------------------------------------------- not fused, in a plain Sequential

    [Test]
    public void PairIsNotFusedWhenTheOptionIsOff()
    {
        using var scope = NewDisposeScope();
        var silu = nn.SiLU();
        using var model = nn.Sequential(("gn", TheirNorm(2, 8)), ("silu", silu));

        var report = GroupNormConverter.Convert(model);

        Assert.That(new GroupNormConversionOptions().fuse_activations, Is.False);
        Assert.That(report.NotFused.Single(), Is.EqualTo(new NotFusedPair("gn", Theirs, "silu", "SiLU", "fuse_activations is off")));
        Assert.That(report.Layers.Single(), Is.EqualTo(new ConvertedLayer("gn", Theirs, 8, 2)));
        Assert.That(((GroupNorm)model[0]).activation, Is.EqualTo(Activation.None));
        Assert.That(model[1], Is.SameAs(silu));
    }

    [Test]
    public void SharedNormIsNotFusedAndStaysShared()
    {
        using var scope = NewDisposeScope();
        var shared = TheirNorm(2, 8);
        var a = nn.Sequential(("gn", shared), ("silu", nn.SiLU()));
        var b = nn.Sequential(("gn", shared), ("relu", nn.ReLU()));
        using var model = nn.Sequential(("a", a), ("b", b));

        var report = GroupNormConverter.Convert(model, Fuse);

        const string Reason = "the norm is held in 2 places, and fusing the activation into it would apply the activation in the others too";
        Assert.That(report.NotFused, Is.EqualTo(new[]
        {
            new NotFusedPair("a.gn", Theirs, "a.silu", "SiLU", Reason), new NotFusedPair("b.gn", Theirs, "b.relu", "ReLU", Reason),
        }));
        Assert.That(report.Layers.Single(), Is.EqualTo(new ConvertedLayer("a.gn", Theirs, 8, 2)));
        Assert.That(a[0], Is.InstanceOf<GroupNorm>().And.SameAs(b[0]));
        Assert.That(((GroupNorm)a[0]).activation, Is.EqualTo(Activation.None));
    }

    [Test]
    public void SameActivationAfterANormThatAlreadyAppliesItIsReportedAsTwice()
    {
        using var scope = NewDisposeScope();
        var ours = new GroupNorm(2, 8, activation: Activation.SiLU, dtype: F64);
        using var model = nn.Sequential(("gn", ours), ("silu", nn.SiLU()));

        var report = GroupNormConverter.Convert(model, Fuse);

        Assert.That(report.NotFused.Single(), Is.EqualTo(new NotFusedPair("gn", "GroupNorm", "silu", "SiLU",
            "the norm already applies SiLU (built with `activation: Activation.SiLU`), so the SiLU after it applies SiLU twice; remove one of them")));
        Assert.That((report.Count, model[0]), Is.EqualTo((0, ours)));
    }

    [Test]
    public void OtherActivationAfterANormThatAlreadyAppliesOneIsNotFused()
    {
        using var scope = NewDisposeScope();
        using var model = nn.Sequential(("gn", new GroupNorm(2, 8, activation: Activation.ReLU, dtype: F64)), ("gelu", nn.GELU()));

        var report = GroupNormConverter.Convert(model, Fuse);

        Assert.That(report.NotFused.Single().reason, Is.EqualTo(
            "the norm already applies ReLU (built with `activation: Activation.ReLU`); a second activation (GELU) cannot be fused into it"));
        Assert.That(report.Count, Is.Zero);
    }

    private static readonly object[] ActivationsWithoutKernel =
    [
        new object[] { (Func<nn.Module<Tensor, Tensor>>)(() => nn.LeakyReLU()), "LeakyReLU" },
        new object[] { (Func<nn.Module<Tensor, Tensor>>)(() => nn.Mish()), "Mish" },
        new object[] { (Func<nn.Module<Tensor, Tensor>>)(() => nn.Sigmoid()), "Sigmoid" },
        new object[] { (Func<nn.Module<Tensor, Tensor>>)(() => nn.Tanh()), "Tanh" },
        new object[] { (Func<nn.Module<Tensor, Tensor>>)(() => nn.Hardswish()), "Hardswish" },
        new object[] { (Func<nn.Module<Tensor, Tensor>>)(() => nn.ELU()), "ELU" },
        new object[] { (Func<nn.Module<Tensor, Tensor>>)(() => nn.ReLU6()), "ReLU6" },
    ];

    [TestCaseSource(nameof(ActivationsWithoutKernel))]
    public void ActivationWithoutAFusedKernelIsNotFused(Func<nn.Module<Tensor, Tensor>> create, string kind)
    {
        using var scope = NewDisposeScope();
        var activation = create();
        using var model = nn.Sequential(("gn", TheirNorm(2, 8)), ("act", activation));

        var report = GroupNormConverter.Convert(model, Fuse);

        Assert.That(report.NotFused.Single(), Is.EqualTo(new NotFusedPair("gn", Theirs, "act", kind,
            $"GroupNorm has no fused kernel for {kind} (it fuses SiLU, ReLU and exact GELU)")));
        Assert.That(((GroupNorm)model[0]).activation, Is.EqualTo(Activation.None), "the norm itself is still swapped");
        Assert.That(model[1], Is.SameAs(activation));
    }

    [Test]
    public void TanhApproximateGELUIsNotFused()
    {
        using var scope = NewDisposeScope();
        using var model = nn.Sequential(("gn", TheirNorm(2, 8)), ("gelu", nn.GELU(GELU.Approximate.tanh)));

        var report = GroupNormConverter.Convert(model, Fuse);

        Assert.That(report.NotFused.Single(), Is.EqualTo(new NotFusedPair("gn", Theirs, "gelu", "GELU",
            "GELU with approximate=tanh has no fused kernel (GroupNorm fuses the exact GELU only)")));
        Assert.That(report.Folded, Is.Empty);
        Assert.That(model[1], Is.InstanceOf<GELU>());
    }

    [Test]
    public void NormWithoutAffineIsNeitherFusedNorSwapped()
    {
        using var scope = NewDisposeScope();
        var theirs = nn.GroupNorm(2, 8, affine: false, dtype: F64);
        using var model = nn.Sequential(("gn", theirs), ("silu", nn.SiLU()));
        var x = Input();
        var before = model.call(x).detach();

        var report = GroupNormConverter.Convert(model, Fuse);

        Assert.That(report.NotFused.Single(), Is.EqualTo(new NotFusedPair("gn", Theirs, "silu", "SiLU",
            "the norm has no weight (affine: false), so its channel count is unknown and it cannot become our GroupNorm")));
        Assert.That(report.NotSwapped.Single(), Is.EqualTo(new NotSwappedLayer("gn", Theirs,
            "it has no weight (built with affine: false), and TorchSharp's GroupNorm does not keep its channel count, so a replacement's num_channels is unknown",
            null,
            "build it in source as our GroupNorm with its channel count C: `gn.GroupNorm(2, C, affine: false)` or `new GroupNorm(2, C, affine: false)`")));
        Assert.That(report.Count, Is.Zero);
        Assert.That(model[0], Is.SameAs(theirs));
        Assert.That(model.call(x).allclose(before, rtol: 0, atol: 0), Is.True);
    }

    // ---------------------------------------------------------------- not fused, order not visible

    [Test]
    public void SequentialWithItsOwnForwardReportsItsPairs()
    {
        using var scope = NewDisposeScope();
        using var model = nn.Sequential(("rev", new Reversed(("gn", TheirNorm(2, 8)), ("silu", nn.SiLU()))));

        var report = GroupNormConverter.Convert(model, Fuse);

        Assert.That(report.NotFused.Single(), Is.EqualTo(new NotFusedPair("rev.gn", Theirs, "rev.silu", "SiLU",
            $"`Reversed` overrides Sequential's forward, so the order of its items is not known; {HandFuseSiLU}")));
        Assert.That(report.Layers.Single().activation, Is.EqualTo(Activation.None));
    }

    [Test]
    public void BlockCallingItsNormsAndActivationIsReportedPairByPair()
    {
        using var scope = NewDisposeScope();
        using var model = nn.Sequential(("block", new VaeResnetBlock()));
        var x = Input();
        var before = model.call(x).detach();

        var report = GroupNormConverter.Convert(model, Fuse);

        const string Reason = $"`VaeResnetBlock`'s forward calls them, so their order is not visible; {HandFuseSiLU}";
        Assert.That(report.NotFused, Is.EqualTo(new[]
        {
            new NotFusedPair("block.norm1", Theirs, "block.nonlinearity", "SiLU", Reason),
            new NotFusedPair("block.norm2", Theirs, "block.nonlinearity", "SiLU", Reason),
        }));
        Assert.That(report.Layers.Select(l => (l.name, l.activation)), Is.EqualTo(new[] { ("block.norm1", Activation.None), ("block.norm2", Activation.None) }));
        Assert.That(model.modules().OfType<TorchSharp.Modules.GroupNorm>(), Is.Empty);
        Assert.That(model.call(x).allclose(before, rtol: 1e-12, atol: 1e-12), Is.True);
    }

    [Test]
    public void BlockWhoseNormAlreadyAppliesTheActivationWarnsOfTwice()
    {
        using var scope = NewDisposeScope();
        using var model = nn.Sequential(("block", new VaeResnetBlock(new GroupNorm(2, 8, activation: Activation.SiLU, dtype: F64))));

        var report = GroupNormConverter.Convert(model, Fuse);

        Assert.That(report.NotFused[0], Is.EqualTo(new NotFusedPair("block.norm1", "GroupNorm", "block.nonlinearity", "SiLU",
            "the norm already applies SiLU (built with `activation: Activation.SiLU`); if `VaeResnetBlock`'s forward calls SiLU after it, SiLU is applied twice")));
        Assert.That(report.NotFused[1].reason, Does.StartWith("`VaeResnetBlock`'s forward calls them"));
    }

    [Test]
    public void PairsInAModuleListAreReportedWithTheirOwner()
    {
        using var scope = NewDisposeScope();
        using var model = new PairsInAModuleList();

        var report = GroupNormConverter.Convert(model, Fuse);

        Assert.That(report.NotFused.Single(), Is.EqualTo(new NotFusedPair("layers.0", Theirs, "layers.1", "SiLU",
            $"they sit in a `ModuleList<Module<Tensor, Tensor>>`, whose owner's forward calls them, so their order is not visible; {HandFuseSiLU}")));
        Assert.That(report.Layers.Single().name, Is.EqualTo("layers.0"));
    }

    // ---------------------------------------------------------------- not swapped: a place that cannot hold ours

    [Test]
    public void FieldTypedAsTheirGroupNormIsReportedWithTheDeclarationToChange()
    {
        using var scope = NewDisposeScope();
        using var model = nn.Sequential(("block", new VaeBlock()));
        var block = (VaeBlock)model[0];
        var norm1 = block.Norm1;
        var x = Input();
        var before = model.call(x).detach();

        var report = GroupNormConverter.Convert(model);

        Assert.That(report.NotSwapped.Single(), Is.EqualTo(new NotSwappedLayer("block.norm1", Theirs,
            "`VaeBlock.norm1` is declared as `TorchSharp.Modules.GroupNorm`, which cannot hold a `GroupNormalization.GroupNorm`",
            "VaeBlock.norm1",
            "declare `VaeBlock.norm1` as `Module<Tensor, Tensor>` (or `GroupNormalization.GroupNorm`)")));
        Assert.That(report.Layers.Single().name, Is.EqualTo("block.norm2"), "the other norm of the block is swapped");
        Assert.That(block.Norm1, Is.SameAs(norm1));
        Assert.That(block.named_children().First().module, Is.SameAs(norm1));
        Assert.That(block.Norm2, Is.InstanceOf<GroupNorm>());
        Assert.That(model.call(x).allclose(before, rtol: 1e-12, atol: 1e-12), Is.True);
    }

    [Test]
    public void AutoPropertyIsNamedAsTheProperty()
    {
        using var scope = NewDisposeScope();
        using var model = nn.Sequential(("block", new PropertyBlock()));
        var norm = ((PropertyBlock)model[0]).Norm;

        var report = GroupNormConverter.Convert(model);

        var entry = report.NotSwapped.Single();
        Assert.That((entry.field, entry.source_change), Is.EqualTo(("PropertyBlock.Norm",
            "declare `PropertyBlock.Norm` as `Module<Tensor, Tensor>` (or `GroupNormalization.GroupNorm`)")));
        Assert.That(entry.reason, Does.StartWith("`PropertyBlock.Norm` is declared as `TorchSharp.Modules.GroupNorm`"));
        Assert.That(((PropertyBlock)model[0]).Norm, Is.SameAs(norm));
        Assert.That(norm.weight.IsInvalid, Is.False);
    }

    [Test]
    public void ListFieldOfTheirTypeIsReportedWithTheDeclarationToChange()
    {
        using var scope = NewDisposeScope();
        using var model = new ListBlock();
        var norms = model.Norms.ToList();

        var report = GroupNormConverter.Convert(model);

        const string Change = "declare `ListBlock.norms` as `List<Module<Tensor, Tensor>>` (or `List<GroupNormalization.GroupNorm>`)";
        const string Reason = "`ListBlock.norms` is a `List<TorchSharp.Modules.GroupNorm>`, whose items cannot be a `GroupNormalization.GroupNorm`";
        Assert.That(report.NotSwapped, Is.EqualTo(new[]
        {
            new NotSwappedLayer("norm0", Theirs, Reason, "ListBlock.norms", Change), new NotSwappedLayer("norm1", Theirs, Reason, "ListBlock.norms", Change),
        }));
        Assert.That(report.Count, Is.Zero);
        Assert.That(model.Norms, Is.EqualTo(norms));
        Assert.That(model.named_children().Select(c => c.module), Is.EqualTo(norms));
    }

    [Test]
    public void ModuleListOfTheirTypeIsReportedWithTheDeclarationToChange()
    {
        using var scope = NewDisposeScope();
        using var model = new ModuleListBlock();
        var norm = model.Norm;

        var report = GroupNormConverter.Convert(model);

        Assert.That(report.NotSwapped.Single(), Is.EqualTo(new NotSwappedLayer("norms.0", Theirs,
            "`ModuleListBlock.norms` is a `ModuleList<TorchSharp.Modules.GroupNorm>`, whose items cannot be a `GroupNormalization.GroupNorm`",
            "ModuleListBlock.norms",
            "declare and build `ModuleListBlock.norms` as `ModuleList<Module<Tensor, Tensor>>` (or `ModuleList<GroupNormalization.GroupNorm>`)")));
        Assert.That(model.Norm, Is.SameAs(norm));
    }

    [Test]
    public void SharedLayerWithOneBlockedPlaceIsLeftEverywhere()
    {
        using var scope = NewDisposeScope();
        var shared = TheirNorm(2, 8);
        var block = new VaeBlock(shared);
        using var model = nn.Sequential(("first", shared), ("block", block));

        var report = GroupNormConverter.Convert(model);

        Assert.That(report.NotSwapped.Single(), Is.EqualTo(new NotSwappedLayer("first", Theirs,
            "`VaeBlock.norm1` is declared as `TorchSharp.Modules.GroupNorm`, which cannot hold a `GroupNormalization.GroupNorm`",
            "VaeBlock.norm1",
            "declare `VaeBlock.norm1` as `Module<Tensor, Tensor>` (or `GroupNormalization.GroupNorm`)")));
        Assert.That(model[0], Is.SameAs(shared), "the Sequential's place could hold ours, but the layer is swapped everywhere or nowhere");
        Assert.That(block.Norm1, Is.SameAs(shared));
        Assert.That(block.Norm2, Is.InstanceOf<GroupNorm>());
        Assert.That(shared.weight.IsInvalid, Is.False);
    }

    // ---------------------------------------------------------------- the summary

    [Test]
    public void SummaryListsWhatWasSwappedFusedNotFusedAndNotSwapped()
    {
        using var scope = NewDisposeScope();
        using var model = nn.Sequential(
            ("stem", nn.Sequential(("gn", TheirNorm(2, 8)), ("silu", nn.SiLU()))),
            ("tail", nn.Sequential(("gn", TheirNorm(4, 8)), ("mish", nn.Mish()))),
            ("block", new VaeBlock()));

        var text = GroupNormConverter.Convert(model, Fuse).ToString();

        Assert.That(text, Does.StartWith("Swapped 3 layers (1 with an activation fused), 1 not fused, 1 not swapped."));
        Assert.That(text, Does.Contain("  stem.gn (TorchSharp.Modules.GroupNorm, 8 channels, 2 groups) + SiLU fused from stem.silu (now an Identity)"));
        Assert.That(text, Does.Contain("  tail.gn (TorchSharp.Modules.GroupNorm, 8 channels, 4 groups)" + Environment.NewLine));
        Assert.That(text, Does.Contain("  block.norm2 (TorchSharp.Modules.GroupNorm, 8 channels, 4 groups)"));
        Assert.That(text, Does.Contain("Not fused:" + Environment.NewLine +
            "  tail.gn (TorchSharp.Modules.GroupNorm) → tail.mish (Mish): GroupNorm has no fused kernel for Mish"));
        Assert.That(text, Does.Contain("Not swapped:" + Environment.NewLine +
            "  block.norm1 (TorchSharp.Modules.GroupNorm): `VaeBlock.norm1` is declared as `TorchSharp.Modules.GroupNorm`, which cannot hold a " +
            "`GroupNormalization.GroupNorm`. To allow it: declare `VaeBlock.norm1` as `Module<Tensor, Tensor>` (or `GroupNormalization.GroupNorm`)."));
        Assert.That(text, Does.EndWith("Activations called as functions in a forward (functional.silu(x), x.silu()) are not modules: no converter sees them."));
    }

    [Test]
    public void SummaryOfAnEmptyConversion()
    {
        using var model = nn.Sequential(("conv", nn.Conv2d(3, 8, 1)));
        Assert.That(GroupNormConverter.Convert(model).ToString(), Is.EqualTo(
            "Swapped 0 layers (0 with an activation fused), 0 not fused, 0 not swapped." + Environment.NewLine +
            "Activations called as functions in a forward (functional.silu(x), x.silu()) are not modules: no converter sees them."));
    }
}
