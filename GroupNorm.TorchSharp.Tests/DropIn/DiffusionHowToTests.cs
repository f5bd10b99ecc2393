using System;
using System.Diagnostics;
using System.Linq;
using GroupNormalization.Conversion;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.DropIn;

/// <summary>
/// docs/diffusion-how-to.md, step by step: its code blocks are the snippet regions of this file
/// (<see cref="DocumentSnippets"/>), run here on a model built the two ways TorchSharp diffusion ports build
/// their blocks (<see cref="DiffusionModel"/>).
/// </summary>
[TestFixture]
public sealed class DiffusionHowToTests
{
    private const string Document = "docs/diffusion-how-to.md";
    private const string Source = "GroupNorm.TorchSharp.Tests/DropIn/DiffusionHowToTests.cs";

    private static readonly string[] s_leftAsTheirs = { "GroupNorm" };
    private static readonly string[] s_fused = { "unet.in_layers.0", "unet.out_layers.0" };
    private static readonly (string, string)[] s_notFused = { ("vae.norm1", "vae.nonlinearity"), ("vae.norm2", "vae.nonlinearity") };
    private static readonly string[] s_notSwapped = { "norm_out" };

    [TestCase("howto-swap")]
    [TestCase("howto-parity")]
    [TestCase("howto-measure")]
    public void DocumentShowsTheStepsThisTestRuns(string name) => DocumentSnippets.AssertShown(Document, Source, name);

    [Test]
    public void SwapFuseCheckAndMeasure()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(7);
        var model = DiffusionModel.Create(64);
        var weights = DiffusionModel.RandomWeights(model);
        var x = torch.randn(2, 64, 16, 16);

        // snippet: howto-swap
        // TorchSharp's nn.GroupNorm starts with uninitialised weights: load the checkpoint first.
        model.load_state_dict(weights);
        Tensor reference;
        using (torch.no_grad()) reference = model.call(x).detach();

        var report = GroupNormConverter.Convert(model, new GroupNormConversionOptions { fuse_activations = true });
        Console.WriteLine(report);
        // end snippet

        Assert.Multiple(() =>
        {
            Assert.That(model.modules().OfType<TorchSharp.Modules.GroupNorm>().Select(m => m.GetName()), Is.EquivalentTo(s_leftAsTheirs),
                "only the field typed TorchSharp.Modules.GroupNorm is left");
            Assert.That(report.Folded.Select(l => l.name), Is.EquivalentTo(s_fused));
            Assert.That(report.NotFused.Select(p => (p.name, p.activation_name)),
                Is.EquivalentTo(s_notFused));
            Assert.That(report.NotSwapped.Select(n => n.name), Is.EquivalentTo(s_notSwapped));
            Assert.That(model.state_dict().Keys, Is.EquivalentTo(weights.Keys), "state_dict keys");
        });

        // snippet: howto-parity
        Tensor swapped;
        using (torch.no_grad()) swapped = model.call(x);
        double difference = (swapped - reference).abs().max().item<float>();
        double scale = reference.abs().max().item<float>();
        Console.WriteLine($"max |swapped − original| = {difference:E2} (outputs up to {scale:F2})");
        // float32 rounding: a SiLU applied twice, or a layer left uninitialised, is off by far more.
        if (difference > 1e-5 * scale) throw new InvalidOperationException("the swapped model does not compute the original");
        // end snippet

        Assert.That(difference, Is.LessThanOrEqualTo(1e-5 * scale));

        var original = DiffusionModel.Create(64);
        original.load_state_dict(weights);
        // snippet: howto-measure
        // Two copies with the same weights, timed in turns so that the machine's drift lands on both.
        double Milliseconds(nn.Module<Tensor, Tensor> m, int calls)
        {
            using var _ = torch.no_grad();
            var clock = Stopwatch.StartNew();
            for (int i = 0; i < calls; i++)
            {
                using var step = torch.NewDisposeScope();
                m.call(x);
            }
            return clock.Elapsed.TotalMilliseconds / calls;
        }
        var ratios = new System.Collections.Generic.List<double>();
        for (int round = 0; round < Rounds; round++)
            ratios.Add(Milliseconds(model, Calls) / Milliseconds(original, Calls));
        ratios.Sort();
        Console.WriteLine($"swapped / original forward time: median {ratios[ratios.Count / 2]:F2}×");
        // end snippet

        Assert.That(ratios, Has.Count.EqualTo(Rounds).And.All.GreaterThan(0));
        original.Dispose();
        model.Dispose();
    }

    // The document uses 15 rounds of 10 calls; the test only shows that the step runs.
    private const int Rounds = 3;
    private const int Calls = 2;

    /// <summary>
    /// The two ways TorchSharp diffusion ports write a residual block: OpenAI's UNet ResBlock keeps
    /// GroupNorm → SiLU → Conv in Sequentials (which the converter can fuse), diffusers' VAE ResnetBlock2D keeps
    /// the norms in fields and calls one SiLU module in forward (which it cannot). One output norm sits in a
    /// field typed TorchSharp.Modules.GroupNorm, which cannot hold ours.
    /// </summary>
    private sealed class DiffusionModel : nn.Module<Tensor, Tensor>
    {
        private readonly UNetResBlock unet;
        private readonly VaeResnetBlock2D vae;
        private readonly TorchSharp.Modules.GroupNorm norm_out;

        private DiffusionModel(long channels) : base(nameof(DiffusionModel))
        {
            unet = new UNetResBlock(channels);
            vae = new VaeResnetBlock2D(channels);
            norm_out = nn.GroupNorm(32, channels, eps: 1e-6);
            RegisterComponents();
        }

        public static DiffusionModel Create(long channels) => new(channels);

        /// <summary>A stand-in for a checkpoint: every parameter drawn at random, norms' weights near 1.</summary>
        public static System.Collections.Generic.Dictionary<string, Tensor> RandomWeights(DiffusionModel model)
        {
            using var _ = torch.no_grad();
            return model.named_parameters().ToDictionary(p => p.name,
                p => p.name.EndsWith("weight", StringComparison.Ordinal) && p.parameter.ndim == 1
                    ? torch.rand_like(p.parameter) + 0.5
                    : torch.randn_like(p.parameter) * 0.1);
        }

        public override Tensor forward(Tensor x) => norm_out.call(vae.call(unet.call(x)));
    }

    private sealed class UNetResBlock : nn.Module<Tensor, Tensor>
    {
        private readonly Sequential in_layers, out_layers;

        public UNetResBlock(long channels) : base(nameof(UNetResBlock))
        {
            in_layers = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding: 1));
            out_layers = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding: 1));
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => x + out_layers.call(in_layers.call(x));
    }

    private sealed class VaeResnetBlock2D : nn.Module<Tensor, Tensor>
    {
        private readonly nn.Module<Tensor, Tensor> norm1, norm2, nonlinearity;
        private readonly Conv2d conv1, conv2;

        public VaeResnetBlock2D(long channels) : base(nameof(VaeResnetBlock2D))
        {
            norm1 = nn.GroupNorm(32, channels, eps: 1e-6);
            conv1 = nn.Conv2d(channels, channels, 3, padding: 1);
            norm2 = nn.GroupNorm(32, channels, eps: 1e-6);
            conv2 = nn.Conv2d(channels, channels, 3, padding: 1);
            nonlinearity = nn.SiLU();
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) =>
            x + conv2.call(nonlinearity.call(norm2.call(conv1.call(nonlinearity.call(norm1.call(x))))));
    }
}
