using System.Linq;
using NUnit.Framework;
using ResNetCifar.Data;
using ResNetCifar.Models;
using ResNetCifar.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace ResNetCifar.Tests.Models;

public sealed class GhostBatchNorm2dTests
{
    private const long Channels = 3;

    private static (Tensor Weight, Tensor Bias) RandomAffine()
    {
        var generator = new torch.Generator(11);
        return (torch.rand(new long[] { Channels }, generator: generator).add_(0.5), torch.randn(new long[] { Channels }, generator: generator));
    }

    private static GhostBatchNorm2d Ghost(int slice, Tensor weight, Tensor bias)
    {
        var ghost = new GhostBatchNorm2d(Channels, slice);
        using (torch.no_grad())
        {
            ghost.Weight.copy_(weight);
            ghost.named_parameters().Single(p => p.name == "bias").parameter.copy_(bias);
        }
        return ghost;
    }

    private static TorchSharp.Modules.BatchNorm2d BatchNorm(Tensor weight, Tensor bias)
    {
        var bn = nn.BatchNorm2d(Channels);
        using (torch.no_grad())
        {
            bn.weight.copy_(weight);
            bn.bias!.copy_(bias);
        }
        return bn;
    }

    /// <summary>
    /// The emulation's contract: in training mode, a batch of k·b images gives what k separate BatchNorm2d
    /// layers (one per emulated device, same γ and β) give on their own b images, in output, in the input's
    /// and the parameters' gradients, and in the running statistics (averaged over the devices).
    /// </summary>
    [TestCase(1)]
    [TestCase(2)]
    [TestCase(4)]
    [TestCase(8)]
    public void TrainingModeEqualsBatchNormOnEachSlice(int slice)
    {
        using var scope = torch.NewDisposeScope();
        const long n = 8;
        var (weight, bias) = RandomAffine();
        var x = torch.randn(new long[] { n, Channels, 5, 4 }, generator: new torch.Generator(3)).mul_(3).add_(1);
        var upstream = torch.randn(new long[] { n, Channels, 5, 4 }, generator: new torch.Generator(4));

        using var ghost = Ghost(slice, weight, bias);
        var xGhost = x.clone().requires_grad_();
        var yGhost = ghost.call(xGhost);
        yGhost.mul(upstream).sum().backward();

        var devices = Enumerable.Range(0, (int)(n / slice)).Select(_ => BatchNorm(weight, bias)).ToList();
        var xSlices = Enumerable.Range(0, devices.Count).Select(i => x.narrow(0, i * slice, slice).clone().requires_grad_()).ToList();
        var ySlices = devices.Select((bn, i) => bn.call(xSlices[i])).ToList();
        torch.cat(ySlices, 0).mul(upstream).sum().backward();

        var biasGradient = ghost.named_parameters().Single(p => p.name == "bias").parameter.grad!;
        Assert.Multiple(() =>
        {
            Assert.That(MaxDifference(yGhost, torch.cat(ySlices, 0)), Is.LessThan(1e-5), "output");
            Assert.That(MaxDifference(xGhost.grad!, torch.cat(xSlices.Select(t => t.grad!).ToList(), 0)), Is.LessThan(1e-5), "input gradient");
            Assert.That(MaxDifference(ghost.Weight.grad!, Sum(devices.Select(d => d.weight.grad!))), Is.LessThan(1e-4), "weight gradient");
            Assert.That(MaxDifference(biasGradient, Sum(devices.Select(d => d.bias!.grad!))), Is.LessThan(1e-4), "bias gradient");
            Assert.That(MaxDifference(ghost.RunningMean, Mean(devices.Select(d => d.running_mean!))), Is.LessThan(1e-6), "running mean");
            Assert.That(MaxDifference(ghost.RunningVar, Mean(devices.Select(d => d.running_var!))), Is.LessThan(1e-5), "running variance");
        });
    }

    [Test]
    public void EvalModeUsesTheRunningStatistics()
    {
        using var scope = torch.NewDisposeScope();
        var (weight, bias) = RandomAffine();
        using var ghost = Ghost(2, weight, bias);
        using var bn = BatchNorm(weight, bias);
        for (var step = 0; step < 3; step++)
        {
            var batch = torch.randn(2, Channels, 4, 4).add_(step);
            ghost.call(batch);
            bn.call(batch);
        }
        ghost.eval();
        bn.eval();
        var x = torch.randn(5, Channels, 4, 4);
        Assert.That(MaxDifference(ghost.call(x), bn.call(x)), Is.LessThan(1e-5));
    }

    [Test]
    public void PreciseBatchNormSetsThePopulationStatistics()
    {
        using var scope = torch.NewDisposeScope();
        var images = torch.randn(new long[] { 250, Channels, 4, 4 }, generator: new torch.Generator(5)).mul_(2).add_(torch.tensor(new float[] { -1, 0, 3 }).view(1, -1, 1, 1));
        using var data = new ImageDataset("synthetic", images, torch.zeros(250, ScalarType.Int64), augment: false);
        using var model = nn.Sequential(("norm", new GhostBatchNorm2d(Channels, 2)));
        var ghost = (GhostBatchNorm2d)model.modules().Single(m => m is GhostBatchNorm2d);

        Assert.That(PreciseBatchNorm.Recalibrate(model, data, 250, torch.CPU), Is.True);

        var perChannel = images.transpose(0, 1).reshape(Channels, -1).to(ScalarType.Float64);
        Assert.Multiple(() =>
        {
            Assert.That(MaxDifference(ghost.RunningMean, perChannel.mean(new long[] { 1 })), Is.LessThan(1e-5));
            Assert.That(MaxDifference(ghost.RunningVar, perChannel.var(1)), Is.LessThan(1e-4));
            Assert.That(ghost.Recalibrating, Is.False);
        });
    }

    [Test]
    public void ASliceThatDoesNotDivideTheBatchIsAnError()
    {
        using var ghost = new GhostBatchNorm2d(Channels, 4);
        using var x = torch.randn(6, Channels, 2, 2);
        Assert.That(() => ghost.call(x), Throws.ArgumentException.With.Message.Contains("slices of 4"));
    }

    [Test]
    public void StateDictKeysAreBatchNorms()
    {
        using var ghost = new GhostBatchNorm2d(Channels, 2);
        using var bn = nn.BatchNorm2d(Channels);
        var bnKeys = bn.state_dict().Keys.Where(k => k != "num_batches_tracked").OrderBy(k => k, System.StringComparer.Ordinal);
        Assert.That(ghost.state_dict().Keys.OrderBy(k => k, System.StringComparer.Ordinal), Is.EqualTo(bnKeys));
    }

    private static double MaxDifference(Tensor a, Tensor b) =>
        (a.to(ScalarType.Float64) - b.to(ScalarType.Float64)).abs().max().item<double>();

    private static Tensor Sum(System.Collections.Generic.IEnumerable<Tensor> tensors) => torch.stack(tensors.ToList(), 0).sum(new long[] { 0 });

    private static Tensor Mean(System.Collections.Generic.IEnumerable<Tensor> tensors) => torch.stack(tensors.ToList(), 0).mean(new long[] { 0 });
}
