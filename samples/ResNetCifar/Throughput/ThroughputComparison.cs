using System.Diagnostics;
using System.Globalization;
using ResNetCifar.Data;
using ResNetCifar.Models;
using ResNetCifar.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace ResNetCifar.Throughput;

/// <summary>
/// Training throughput of the same network with our GroupNorm and with TorchSharp's nn.GroupNorm, in one
/// process on the same batches. The two alternate in short rounds (and swap who goes first) so that
/// drifting machine load falls on both alike.
/// </summary>
internal static class ThroughputComparison
{
    /// <summary>Images per second of each, the steps each took, and minor page faults per step (null where not measurable).</summary>
    public sealed record Result(double OursImagesPerSecond, double BuiltinImagesPerSecond, long StepsEach, double? OursFaultsPerStep = null, double? BuiltinFaultsPerStep = null)
    {
        public double Ratio => OursImagesPerSecond / BuiltinImagesPerSecond;
    }

    public static Result Run(TrainSettings settings, ImageDataset train, int rounds, int stepsPerRound, IProgressDisplay display)
    {
        var device = Trainer.ResolveDevice(settings.Device);
        var oursSettings = settings with { Norm = NormKind.Gn };
        var builtinSettings = settings with { Norm = NormKind.GnBuiltin };
        torch.manual_seed(settings.Seed);
        using var ours = ModelFactory.Create(settings.Model, settings.Depth, train.Channels, 10, oursSettings.CreateNormFactory(), display.WriteLine);
        torch.manual_seed(settings.Seed);
        using var builtin = ModelFactory.Create(settings.Model, settings.Depth, train.Channels, 10, builtinSettings.CreateNormFactory(), display.WriteLine);
        ours.to(device);
        builtin.to(device);
        MemoryFormat.ConvertWeights(ours, settings.ChannelsLast);
        MemoryFormat.ConvertWeights(builtin, settings.ChannelsLast);
        using var oursOptimizer = Trainer.CreateOptimizer(ours, oursSettings);
        using var builtinOptimizer = Trainer.CreateOptimizer(builtin, builtinSettings);
        var batchSize = settings.BatchSize;
        var batchesAvailable = train.Count / batchSize;

        // Warm-up: first calls allocate and pick kernels.
        var channelsLast = settings.ChannelsLast;
        TimeSteps(ours, oursOptimizer, train, device, batchSize, 0, 3, batchesAvailable, channelsLast);
        TimeSteps(builtin, builtinOptimizer, train, device, batchSize, 0, 3, batchesAvailable, channelsLast);

        bool measurable = PageFaults.MinorFaults() is not null;
        double oursSeconds = 0, builtinSeconds = 0;
        long oursFaults = 0, builtinFaults = 0;
        for (var round = 0; round < rounds; round++)
        {
            var firstBatch = (long)round * stepsPerRound;
            (double Seconds, long Faults) a, b;
            if (round % 2 == 0)
            {
                a = TimeSteps(ours, oursOptimizer, train, device, batchSize, firstBatch, stepsPerRound, batchesAvailable, channelsLast);
                b = TimeSteps(builtin, builtinOptimizer, train, device, batchSize, firstBatch, stepsPerRound, batchesAvailable, channelsLast);
            }
            else
            {
                b = TimeSteps(builtin, builtinOptimizer, train, device, batchSize, firstBatch, stepsPerRound, batchesAvailable, channelsLast);
                a = TimeSteps(ours, oursOptimizer, train, device, batchSize, firstBatch, stepsPerRound, batchesAvailable, channelsLast);
            }
            oursSeconds += a.Seconds;
            builtinSeconds += b.Seconds;
            oursFaults += a.Faults;
            builtinFaults += b.Faults;
            var images = (double)stepsPerRound * batchSize;
            var faults = measurable
                ? string.Create(CultureInfo.InvariantCulture, $"; page faults per step: ours {(double)a.Faults / stepsPerRound:F0}, built-in {(double)b.Faults / stepsPerRound:F0}")
                : "";
            display.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"round {round + 1}/{rounds}: ours {images / a.Seconds:F0} img/s, built-in {images / b.Seconds:F0} img/s{faults}"));
        }
        var total = (double)rounds * stepsPerRound * batchSize;
        long stepsEach = (long)rounds * stepsPerRound;
        return new Result(total / oursSeconds, total / builtinSeconds, stepsEach,
            measurable ? (double)oursFaults / stepsEach : null, measurable ? (double)builtinFaults / stepsEach : null);
    }

    private static (double Seconds, long Faults) TimeSteps(nn.Module<Tensor, Tensor> model, optim.Optimizer optimizer, ImageDataset train, Device device, int batchSize, long firstBatch, int steps, long batchesAvailable, bool channelsLast)
    {
        model.train();
        var faultsBefore = PageFaults.MinorFaults() ?? 0;
        var clock = Stopwatch.StartNew();
        for (var i = 0; i < steps; i++)
        {
            using var scope = torch.NewDisposeScope();
            var start = (firstBatch + i) % batchesAvailable * batchSize;
            var x = MemoryFormat.Apply(train.Images.narrow(0, start, batchSize).to(device), channelsLast);
            var y = train.Labels.narrow(0, start, batchSize).to(device);
            var loss = nn.functional.cross_entropy(model.call(x), y);
            optimizer.zero_grad();
            loss.backward();
            optimizer.step();
            // Reading the loss waits for the device, so the clock measures finished work.
            _ = loss.item<float>();
        }
        var seconds = clock.Elapsed.TotalSeconds;
        return (seconds, (PageFaults.MinorFaults() ?? 0) - faultsBefore);
    }
}
