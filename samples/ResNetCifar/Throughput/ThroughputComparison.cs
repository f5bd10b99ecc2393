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
    public sealed record Result(double OursImagesPerSecond, double BuiltinImagesPerSecond, long StepsEach)
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
        using var oursOptimizer = Trainer.CreateOptimizer(ours, oursSettings);
        using var builtinOptimizer = Trainer.CreateOptimizer(builtin, builtinSettings);
        var batchSize = settings.BatchSize;
        var batchesAvailable = train.Count / batchSize;

        // Warm-up: first calls allocate and pick kernels.
        var channelsLast = settings.ChannelsLast;
        TimeSteps(ours, oursOptimizer, train, device, batchSize, 0, 3, batchesAvailable, channelsLast);
        TimeSteps(builtin, builtinOptimizer, train, device, batchSize, 0, 3, batchesAvailable, channelsLast);

        double oursSeconds = 0, builtinSeconds = 0;
        for (var round = 0; round < rounds; round++)
        {
            var firstBatch = (long)round * stepsPerRound;
            double a, b;
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
            oursSeconds += a;
            builtinSeconds += b;
            var images = (double)stepsPerRound * batchSize;
            display.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"round {round + 1}/{rounds}: ours {images / a:F0} img/s, built-in {images / b:F0} img/s"));
        }
        var total = (double)rounds * stepsPerRound * batchSize;
        return new Result(total / oursSeconds, total / builtinSeconds, (long)rounds * stepsPerRound);
    }

    private static double TimeSteps(nn.Module<Tensor, Tensor> model, optim.Optimizer optimizer, ImageDataset train, Device device, int batchSize, long firstBatch, int steps, long batchesAvailable, bool channelsLast)
    {
        model.train();
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
        return clock.Elapsed.TotalSeconds;
    }
}
