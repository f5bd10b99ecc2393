using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.Linq;
using ResNetCifar.Data;
using ResNetCifar.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ResNetCifar.Training;

/// <summary>Trains and evaluates one network: SGD with momentum, per-step learning-rate schedule, evaluation every epoch.</summary>
internal static class Trainer
{
    public static Device ResolveDevice(string name) => name switch
    {
        "cpu" => torch.CPU,
        "cuda" when torch.cuda.is_available() => torch.CUDA,
        "cuda" => throw new InvalidOperationException("--device cuda: CUDA is not available. This build links TorchSharp-cpu; build with -p:TorchSharpBackend=cuda-linux (or cuda-windows) on a machine with an NVIDIA GPU, or use --device cpu."),
        _ => throw new ArgumentException($"--device must be cpu or cuda, but got '{name}'."),
    };

    public static TrainResult Run(TrainSettings settings, ImageDataset train, ImageDataset test, IProgressDisplay display)
    {
        var device = ResolveDevice(settings.Device);
        using var model = CreateModel(settings, train.Channels, device, display.WriteLine);
        using var optimizer = CreateOptimizer(model, settings);
        return Run(settings, model, optimizer, train, test, device, display);
    }

    // Initialisation draws from libtorch's global generator; runs on several threads take turns, so that a
    // seed gives the same weights whatever else is running.
    private static readonly object InitialisationLock = new();

    /// <summary>The network of <paramref name="settings"/>, initialised from its seed, on <paramref name="device"/>.</summary>
    public static nn.Module<Tensor, Tensor> CreateModel(TrainSettings settings, long inChannels, Device device, Action<string> log)
    {
        nn.Module<Tensor, Tensor> model;
        lock (InitialisationLock)
        {
            torch.manual_seed(settings.Seed);
            model = ModelFactory.Create(settings.Model, settings.Depth, inChannels, 10, settings.CreateNormFactory(), log, settings.CreateConvFactory());
        }
        model.to(device);
        MemoryFormat.ConvertWeights(model, settings.ChannelsLast);
        return model;
    }

    /// <summary>SGD; weight decay only on convolution and linear weights, not on norm parameters (unless asked) or biases.</summary>
    public static SGD CreateOptimizer(nn.Module model, TrainSettings settings)
    {
        var normParameters = new HashSet<IntPtr>();
        foreach (var module in model.modules())
        {
            if (module is GroupNormalization.GroupNorm or TorchSharp.Modules.GroupNorm or BatchNorm or GhostBatchNorm2d)
            {
                foreach (var p in module.parameters(recurse: false)) normParameters.Add(p.Handle);
            }
        }
        var decay = new List<Parameter>();
        var noDecay = new List<Parameter>();
        foreach (var (name, p) in model.named_parameters())
        {
            var exempt = normParameters.Contains(p.Handle)
                ? !settings.NormWeightDecay
                : name.EndsWith("bias", StringComparison.Ordinal);
            (exempt ? noDecay : decay).Add(p);
        }
        var groups = new List<SGD.ParamGroup>
        {
            new(decay, lr: settings.LearningRate, momentum: settings.Momentum, weight_decay: settings.WeightDecay),
            new(noDecay, lr: settings.LearningRate, momentum: settings.Momentum, weight_decay: 0),
        };
        return new SGD(groups, settings.LearningRate, settings.Momentum, weight_decay: settings.WeightDecay);
    }

    public static TrainResult Run(TrainSettings settings, nn.Module<Tensor, Tensor> model, SGD optimizer, ImageDataset train, ImageDataset test, Device device, IProgressDisplay display)
    {
        var stepsPerEpoch = train.Count / settings.BatchSize;
        if (stepsPerEpoch < 1)
            throw new ArgumentException($"--batch-size {settings.BatchSize} is larger than the {train.Count} training images.");
        var totalSteps = settings.ImageBudget > 0
            ? Math.Max(1, (settings.ImageBudget + settings.BatchSize - 1) / settings.BatchSize)
            : stepsPerEpoch * settings.Epochs;
        var epochs = (int)((totalSteps + stepsPerEpoch - 1) / stepsPerEpoch);
        var warmupSteps = (long)Math.Round(totalSteps * settings.WarmupFraction);

        var firstEpoch = 1;
        if (settings.Resume && settings.CheckpointPath is not null)
        {
            firstEpoch = Checkpoint.Load(settings.CheckpointPath, model, optimizer) + 1;
            display.WriteLine($"Resumed from {settings.CheckpointPath} after epoch {firstEpoch - 1}.");
        }
        var csv = settings.CsvPath is null ? null : new CsvLog(settings.CsvPath, append: settings.Resume);
        var parameterCount = model.parameters().Sum(p => p.numel());

        var generator = new torch.Generator((ulong)settings.Seed);
        var results = new List<EpochResult>();
        var clock = Stopwatch.StartNew();
        double testAccuracy = double.NaN, testLoss = double.NaN;
        for (var epoch = firstEpoch; epoch <= epochs; epoch++)
        {
            var firstStep = (epoch - 1) * stepsPerEpoch;
            var steps = Math.Min(stepsPerEpoch, totalSteps - firstStep);
            var epochResult = TrainEpoch(settings, model, optimizer, train, device, generator, epoch, epochs, firstStep, steps, totalSteps, warmupSteps, display);

            if (settings.EvaluateEachEpoch || epoch == epochs)
            {
                (testLoss, testAccuracy) = Evaluate(model, test, device, settings.EvalBatchSize, settings.ChannelsLast);
                epochResult = epochResult with { TestLoss = testLoss, TestAccuracy = testAccuracy };
                display.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"epoch {epoch}/{epochs}: train loss {epochResult.TrainLoss:F4}, train acc {epochResult.TrainAccuracy:P2}, test loss {testLoss:F4}, test acc {testAccuracy:P2}, {epochResult.Seconds:F0} s, {epochResult.ImagesPerSecond:F0} img/s"));
            }
            results.Add(epochResult);
            csv?.Write(epochResult);
            if (settings.CheckpointPath is not null) Checkpoint.Save(settings.CheckpointPath, model, optimizer, epoch);
        }
        if (results.Count == 0) (testLoss, testAccuracy) = Evaluate(model, test, device, settings.EvalBatchSize, settings.ChannelsLast);
        return new TrainResult(results, testAccuracy, testLoss, clock.Elapsed.TotalSeconds, parameterCount);
    }

    private static EpochResult TrainEpoch(
        TrainSettings settings, nn.Module<Tensor, Tensor> model, SGD optimizer, ImageDataset train, Device device, torch.Generator generator,
        int epoch, int epochs, long firstStep, long steps, long totalSteps, long warmupSteps, IProgressDisplay display)
    {
        model.train();
        var batchSize = settings.BatchSize;
        using var order = torch.randperm(train.Count, generator: generator);
        double lossSum = 0, lr = 0;
        long correct = 0, seen = 0;
        var clock = Stopwatch.StartNew();

        display.RunEpoch($"epoch {epoch}/{epochs}", steps, report =>
        {
            for (long step = 0; step < steps; step++)
            {
                lr = settings.Schedule.RateAt(settings.LearningRate, firstStep + step, totalSteps, warmupSteps);
                foreach (var group in optimizer.ParamGroups) group.LearningRate = lr;

                using var scope = torch.NewDisposeScope();
                var index = order.narrow(0, step * batchSize, batchSize);
                var x = train.Images.index_select(0, index);
                var y = train.Labels.index_select(0, index);
                if (settings.Augment ?? train.Augment) x = Augmentation.CropAndFlip(x, generator);
                x = MemoryFormat.Apply(x.to(device), settings.ChannelsLast);
                y = y.to(device);

                var logits = model.call(x);
                var loss = nn.functional.cross_entropy(logits, y);
                optimizer.zero_grad();
                loss.backward();
                optimizer.step();

                var lossValue = loss.item<float>();
                if (!float.IsFinite(lossValue))
                    throw new InvalidOperationException(string.Create(CultureInfo.InvariantCulture, $"The loss became {lossValue} at epoch {epoch}, step {step + 1} (lr {lr:G3}); lower --lr."));
                lossSum += lossValue * batchSize;
                correct += logits.argmax(dim: 1).eq(y).sum().item<long>();
                seen += batchSize;
                report(new StepProgress(step + 1, steps, lossSum / seen, (double)correct / seen, seen / clock.Elapsed.TotalSeconds, lr));
            }
        });

        var seconds = clock.Elapsed.TotalSeconds;
        return new EpochResult(epoch, seen, lossSum / Math.Max(1, seen), (double)correct / Math.Max(1, seen), double.NaN, double.NaN, seconds, seen / seconds, lr);
    }

    /// <summary>Mean cross-entropy and accuracy on <paramref name="data"/>, in eval mode without gradients.</summary>
    public static (double Loss, double Accuracy) Evaluate(nn.Module<Tensor, Tensor> model, ImageDataset data, Device device, int batchSize, bool channelsLast = false)
    {
        model.eval();
        using var noGrad = torch.no_grad();
        double lossSum = 0;
        long correct = 0;
        for (long start = 0; start < data.Count; start += batchSize)
        {
            using var scope = torch.NewDisposeScope();
            var n = Math.Min(batchSize, data.Count - start);
            var x = MemoryFormat.Apply(data.Images.narrow(0, start, n).to(device), channelsLast);
            var y = data.Labels.narrow(0, start, n).to(device);
            var logits = model.call(x);
            lossSum += nn.functional.cross_entropy(logits, y, reduction: nn.Reduction.Sum).item<float>();
            correct += logits.argmax(dim: 1).eq(y).sum().item<long>();
        }
        model.train();
        return (lossSum / data.Count, (double)correct / data.Count);
    }
}
