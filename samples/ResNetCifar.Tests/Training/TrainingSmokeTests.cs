using System;
using System.IO;
using System.Linq;
using GroupNormalization;
using NUnit.Framework;
using ResNetCifar.Data;
using ResNetCifar.Models;
using ResNetCifar.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace ResNetCifar.Tests.Training;

public sealed class TrainingSmokeTests
{
    private static readonly int[] SecondEpochOnly = [2];

    private static ImageDataset Synthetic(int count, long channels, bool augment)
    {
        using var scope = torch.NewDisposeScope();
        var generator = new torch.Generator(7);
        var labels = torch.randint(0, 10, new long[] { count }, generator: generator);
        // Class-dependent brightness so that two steps can already move the loss.
        var images = torch.randn(new long[] { count, channels, 32, 32 }, generator: generator)
            .add_(labels.to(ScalarType.Float32).view(-1, 1, 1, 1).div_(5));
        return new ImageDataset("synthetic", images, labels, augment);
    }

    [TestCase("gn", false)]
    [TestCase("bn", true)]
    [TestCase("gn-builtin", false)]
    public void TwoStepsOfResNet20GiveFiniteLoss(string normName, bool augment)
    {
        var norm = normName switch { "bn" => NormKind.Bn, "gn-builtin" => NormKind.GnBuiltin, _ => NormKind.Gn };
        using var train = Synthetic(32, 3, augment);
        using var test = Synthetic(16, 3, false);
        var settings = new TrainSettings { Norm = norm, BatchSize = 16, Epochs = 1, LearningRate = 0.05 };

        var result = Trainer.Run(settings, train, test, new SilentProgressDisplay());

        var epoch = result.Epochs.Single();
        Assert.That(epoch.Images, Is.EqualTo(32));
        Assert.That(double.IsFinite(epoch.TrainLoss), Is.True);
        Assert.That(double.IsFinite(result.FinalTestLoss), Is.True);
        Assert.That(result.FinalTestAccuracy, Is.InRange(0.0, 1.0));
    }

    /// <summary>
    /// --channels-last: the batch reaches every layer in channels_last (so that our GroupNorm runs its
    /// channels-last kernels), and one training step gives the same loss as in NCHW.
    /// </summary>
    [Test]
    public void ChannelsLastTrainsLikeNchw()
    {
        using var batch = torch.randn(4, 3, 32, 32);
        using var channelsLast = MemoryFormat.Apply(batch, channelsLast: true);
        using var permuted = channelsLast.permute(0, 2, 3, 1);
        Assert.Multiple(() =>
        {
            Assert.That(channelsLast.shape, Is.EqualTo(batch.shape));
            Assert.That(permuted.is_contiguous(), Is.True, "channels are not innermost");
            Assert.That(channelsLast.eq(batch).all().item<bool>(), Is.True, "the values changed");
            Assert.That(ReferenceEquals(MemoryFormat.Apply(batch, channelsLast: false), batch), Is.True);
        });

        // Fashion-MNIST has one channel, which a permute-and-copy leaves row-major: the convolution after it
        // must still run in channels_last.
        using var conv = nn.Conv2d(1, 8, 3, padding: 1);
        MemoryFormat.ConvertWeights(conv, channelsLast: true);
        using var gray = MemoryFormat.Apply(torch.randn(2, 1, 8, 8), channelsLast: true);
        using var h = conv.forward(gray);
        using var hp = h.permute(0, 2, 3, 1);
        Assert.That(hp.is_contiguous(), Is.True, "the convolution did not run in channels_last");

        double LossAfterOneStep(bool cl)
        {
            using var train = Synthetic(16, 3, false);
            using var test = Synthetic(16, 3, false);
            torch.manual_seed(3);
            var settings = new TrainSettings { BatchSize = 16, Epochs = 1, LearningRate = 0.05, ChannelsLast = cl, Seed = 3 };
            return Trainer.Run(settings, train, test, new SilentProgressDisplay()).FinalTestLoss;
        }
        // The two layouts run the same arithmetic in other summation orders (libtorch picks convolution
        // algorithms per layout and thread count), so the losses may differ by float32 rounding only: three
        // passes (forward, backward, forward after the step) through ResNet-20's 39 layers (19 convolutions,
        // 19 norms, the classifier), each reduction of at most K = 2,048 terms (a norm group of 2 channels × 32 × 32)
        // losing log2 K + 4 = 15 roundings of 2^-24: 1.1e-4 of the loss. Measured here: identical. Images
        // read the wrong way (flipped left to right) move it by 2.4e-3, 23× the margin.
        double margin = 3 * 39 * (Math.Log2(2048) + 4) * Math.Pow(2, -24);
        double loss = LossAfterOneStep(false), lossChannelsLast = LossAfterOneStep(true);
        TestContext.Out.WriteLine($"loss after one step: NCHW {loss:R}, channels_last {lossChannelsLast:R}, margin {margin:E2} relative");
        Assert.That(Math.Abs(lossChannelsLast - loss), Is.LessThanOrEqualTo(margin * Math.Abs(loss)), "channels_last loss against NCHW's");
    }

    [Test]
    public void CheckpointResumesAtTheNextEpochAndCsvGetsOneLinePerEpoch()
    {
        using var train = Synthetic(16, 1, false);
        using var test = Synthetic(8, 1, false);
        var directory = Directory.CreateTempSubdirectory("resnet-checkpoint-").FullName;
        try
        {
            var checkpoint = Path.Combine(directory, "model.bin");
            var csv = Path.Combine(directory, "log.csv");
            var settings = new TrainSettings { BatchSize = 8, Epochs = 1, CheckpointPath = checkpoint, CsvPath = csv };
            Trainer.Run(settings, train, test, new SilentProgressDisplay());

            var resumed = Trainer.Run(settings with { Epochs = 2, Resume = true }, train, test, new SilentProgressDisplay());

            Assert.That(resumed.Epochs.Select(e => e.Epoch), Is.EqualTo(SecondEpochOnly));
            Assert.That(File.ReadAllLines(csv), Has.Length.EqualTo(3));
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Test]
    public void ImageBudgetFixesTheNumberOfSteps()
    {
        using var train = Synthetic(32, 1, false);
        using var test = Synthetic(8, 1, false);
        var settings = new TrainSettings { BatchSize = 2, ImageBudget = 4, EvaluateEachEpoch = false };

        var result = Trainer.Run(settings, train, test, new SilentProgressDisplay());

        Assert.That(result.Epochs.Sum(e => e.Images), Is.EqualTo(4));
        Assert.That(double.IsFinite(result.FinalTestLoss), Is.True);
    }

    [TestCase(20)]
    [TestCase(32)]
    public void CifarResNetHasTheDepthItIsAskedFor(int depth)
    {
        using var model = new CifarResNet(depth, 3, 10, new NormFactory(NormKind.Gn));
        var convs = model.modules().OfType<TorchSharp.Modules.Conv2d>().Count(c => c.weight.shape[2] == 3);
        Assert.That(convs + 1, Is.EqualTo(depth), "3×3 convolutions plus the classifier");
        Assert.That(model.modules().OfType<GroupNorm>().All(g => g.num_groups == 8), Is.True);
    }

    [Test]
    public void BadGroupCountIsExplained() =>
        Assert.That(() => new CifarResNet(20, 3, 10, new NormFactory(NormKind.Gn, groups: 5)),
            Throws.ArgumentException.With.Message.Contains("--groups 5"));
}
