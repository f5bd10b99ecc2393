using System;
using System.CommandLine;
using System.Globalization;
using System.IO;
using ResNetCifar.Data;
using ResNetCifar.Models;
using ResNetCifar.Study;
using ResNetCifar.Throughput;
using ResNetCifar.Training;
using TorchSharp;

namespace ResNetCifar;

/// <summary>The command line: train (the root command), <c>study</c> and <c>throughput</c>, with shared options.</summary>
internal sealed class SampleCommands
{
    private readonly Option<string> _model = new("--model") { Description = "resnet (CIFAR ResNet, see --depth), resnet18 (torchvision, norm via norm_layer) or resnet18-converted (torchvision BatchNorm model run through BatchNormConverter)", DefaultValueFactory = _ => ModelFactory.CifarResNetName, Recursive = true };
    private readonly Option<int> _depth = new("--depth") { Description = "CIFAR ResNet depth 6n+2 (20, 32, 44, 56, 110)", DefaultValueFactory = _ => 20, Recursive = true };
    private readonly Option<string> _norm = new("--norm") { Description = "gn (GroupNorm.TorchSharp), bn (BatchNorm2d) or gn-builtin (TorchSharp's nn.GroupNorm)", DefaultValueFactory = _ => "gn", Recursive = true };
    private readonly Option<long> _groups = new("--groups") { Description = "GroupNorm groups; must divide 16, 32 and 64", DefaultValueFactory = _ => 8, Recursive = true };
    private readonly Option<long?> _channelsPerGroup = new("--channels-per-group") { Description = "channels per group instead of a fixed group count (G = C / this)", Recursive = true };
    private readonly Option<int> _epochs = new("--epochs") { Description = "training epochs", DefaultValueFactory = _ => 1, Recursive = true };
    private readonly Option<int> _batchSize = new("--batch-size") { Description = "images per step", DefaultValueFactory = _ => 32, Recursive = true };
    private readonly Option<double> _lr = new("--lr") { Description = "peak learning rate (in study mode: the rate at batch size 32)", DefaultValueFactory = _ => 0.1, Recursive = true };
    private readonly Option<double> _weightDecay = new("--weight-decay") { Description = "L2 penalty on conv and linear weights", DefaultValueFactory = _ => 5e-4, Recursive = true };
    private readonly Option<string> _schedule = new("--schedule") { Description = "cosine or step (÷10 at 50% and 75%), after a short linear warm-up", DefaultValueFactory = _ => "cosine", Recursive = true };
    private readonly Option<double> _warmup = new("--warmup") { Description = "fraction of the steps spent warming the learning rate up", DefaultValueFactory = _ => 0.03, Recursive = true };
    private readonly Option<long> _seed = new("--seed") { Description = "random seed", DefaultValueFactory = _ => 1, Recursive = true };
    private readonly Option<string> _device = new("--device") { Description = "cpu or cuda", DefaultValueFactory = _ => "cpu", Recursive = true };
    private readonly Option<string?> _data = new("--data") { Description = "folder with CIFAR-10's binary files (data_batch_1..5.bin, test_batch.bin) or Fashion-MNIST's IDX .gz files", Recursive = true };
    private readonly Option<string> _fashion = new("--fashion-mnist") { Description = "where the Fashion-MNIST fallback lives", DefaultValueFactory = _ => FashionMnistReader.DefaultDirectory, Recursive = true };
    private readonly Option<bool> _offline = new("--offline") { Description = "never try to download CIFAR-10", Recursive = true };
    private readonly Option<long> _limitTrain = new("--limit-train") { Description = "use only N training images (0: all)", Recursive = true };
    private readonly Option<long> _limitTest = new("--limit-test") { Description = "use only N test images (0: all)", Recursive = true };
    private readonly Option<string?> _csv = new("--csv") { Description = "append one line per epoch to this CSV file" };
    private readonly Option<string?> _checkpoint = new("--checkpoint") { Description = "save model and optimizer state here after every epoch" };
    private readonly Option<bool> _resume = new("--resume") { Description = "continue from --checkpoint" };
    private readonly Option<int> _threads = new("--threads") { Description = "CPU threads for libtorch and the GroupNorm kernels (0: libtorch's default). 1 is much faster when another process keeps the cores busy", Recursive = true };
    private readonly Option<bool> _channelsLast = new("--channels-last") { Description = "feed batches in channels_last memory format, so that every convolution and norm runs in it", Recursive = true };
    private readonly Option<bool> _plain = new("--plain") { Description = "plain progress lines even in a terminal", Recursive = true };

    private readonly Option<long> _budget = new("--budget") { Description = "training images per run (8000: about 13 minutes for the whole study on 2 busy cores)", DefaultValueFactory = _ => 8000 };
    private readonly Option<string> _out = new("--out") { Description = "folder for study.csv and study.png", DefaultValueFactory = _ => "results" };
    private readonly Option<int> _rounds = new("--rounds") { Description = "alternating rounds", DefaultValueFactory = _ => 6 };
    private readonly Option<int> _steps = new("--steps") { Description = "training steps per model per round", DefaultValueFactory = _ => 50 };

    public RootCommand Build()
    {
        var root = new RootCommand("ResNet on CIFAR-10 (or Fashion-MNIST offline) with GroupNorm.TorchSharp: train, study batch sizes, compare throughput.");
        foreach (var option in new Option[] { _model, _depth, _norm, _groups, _channelsPerGroup, _epochs, _batchSize, _lr, _weightDecay, _schedule, _warmup, _seed, _device, _data, _fashion, _offline, _limitTrain, _limitTest, _csv, _checkpoint, _resume, _threads, _channelsLast, _plain })
            root.Options.Add(option);
        root.SetAction(result => Guard(() => Train(result)));

        var study = new Command("study", "GroupNorm vs BatchNorm at batch sizes 32, 16, 8, 4, 2 on a fixed budget of images; lr scales linearly with batch size. Writes study.csv and study.png.");
        study.Options.Add(_budget);
        study.Options.Add(_out);
        study.SetAction(result => Guard(() => RunStudy(result)));
        root.Subcommands.Add(study);

        var throughput = new Command("throughput", "Training images/s of the same network with our GroupNorm and with TorchSharp's nn.GroupNorm, alternating in one process.");
        throughput.Options.Add(_rounds);
        throughput.Options.Add(_steps);
        throughput.SetAction(result => Guard(() => RunThroughput(result)));
        root.Subcommands.Add(throughput);
        return root;
    }

    private static int Guard(Func<int> action)
    {
        try
        {
            return action();
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or IOException or FormatException)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 1;
        }
    }

    private TrainSettings Settings(ParseResult r)
    {
        var threads = r.GetValue(_threads);
        if (threads < 0) throw new ArgumentException($"--threads must be 0 (default) or positive, but got {threads}.");
        if (threads > 0) torch.set_num_threads(threads);
        return ReadSettings(r);
    }

    private TrainSettings ReadSettings(ParseResult r) => new()
    {
        Model = r.GetValue(_model)!,
        Depth = r.GetValue(_depth),
        Norm = ParseNorm(r.GetValue(_norm)!),
        Groups = r.GetValue(_groups),
        ChannelsPerGroup = r.GetValue(_channelsPerGroup),
        Epochs = Positive(r.GetValue(_epochs), "--epochs"),
        BatchSize = Positive(r.GetValue(_batchSize), "--batch-size"),
        LearningRate = r.GetValue(_lr),
        WeightDecay = r.GetValue(_weightDecay),
        Schedule = r.GetValue(_schedule) switch
        {
            "cosine" => LrSchedule.Cosine,
            "step" => LrSchedule.Step,
            var other => throw new ArgumentException($"--schedule must be cosine or step, but got '{other}'."),
        },
        WarmupFraction = r.GetValue(_warmup),
        Seed = r.GetValue(_seed),
        Device = r.GetValue(_device)!,
        ChannelsLast = r.GetValue(_channelsLast),
        CsvPath = r.GetValue(_csv),
        CheckpointPath = r.GetValue(_checkpoint),
        Resume = r.GetValue(_resume),
    };

    private static NormKind ParseNorm(string norm) => norm switch
    {
        "gn" => NormKind.Gn,
        "bn" => NormKind.Bn,
        "gn-builtin" => NormKind.GnBuiltin,
        _ => throw new ArgumentException($"--norm must be gn, bn or gn-builtin, but got '{norm}'."),
    };

    private static int Positive(int value, string name) =>
        value > 0 ? value : throw new ArgumentException($"{name} must be positive, but got {value}.");

    private IProgressDisplay Display(ParseResult r) =>
        !r.GetValue(_plain) && SpectreProgressDisplay.IsSupported ? new SpectreProgressDisplay() : new PlainProgressDisplay(Console.Out);

    private LoadedData LoadData(ParseResult r, TrainSettings settings, IProgressDisplay display)
    {
        if (settings.Resume && settings.CheckpointPath is null)
            throw new ArgumentException("--resume needs --checkpoint PATH.");
        var data = DatasetLoader.Load(r.GetValue(_data), r.GetValue(_fashion)!, r.GetValue(_offline), r.GetValue(_limitTrain), r.GetValue(_limitTest), settings.Seed);
        display.WriteLine($"Data: {data.Description}");
        return data;
    }

    private int Train(ParseResult r)
    {
        var settings = Settings(r);
        Trainer.ResolveDevice(settings.Device);
        var display = Display(r);
        using var data = LoadData(r, settings, display);
        display.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"Model: {settings.Model}{(settings.Model == ModelFactory.CifarResNetName ? $"-{settings.Depth}" : "")}, norm {r.GetValue(_norm)}, batch {settings.BatchSize}, lr {settings.LearningRate}, {settings.Schedule} schedule, {settings.Epochs} epoch(s), device {settings.Device}{(settings.ChannelsLast ? ", channels_last" : "")}, {torch.get_num_threads()} threads"));
        var result = Trainer.Run(settings, data.Train, data.Test, display);
        display.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"Done: test accuracy {result.FinalTestAccuracy:P2} after {result.Epochs.Count} epoch(s) in {result.Seconds:F0} s ({result.ParameterCount} parameters)."));
        return 0;
    }

    private int RunStudy(ParseResult r)
    {
        var settings = Settings(r);
        Trainer.ResolveDevice(settings.Device);
        var display = Display(r);
        using var data = LoadData(r, settings, display);
        var budget = r.GetValue(_budget);
        if (budget < BatchSizeStudy.BatchSizes[0])
            throw new ArgumentException($"--budget must be at least {BatchSizeStudy.BatchSizes[0]} images, but got {budget}.");
        var rows = BatchSizeStudy.Run(settings, data, budget, r.GetValue(_out)!, display);
        display.WriteLine("norm  batch  lr       test acc");
        foreach (var row in rows)
            display.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{row.Norm,-5} {row.BatchSize,5}  {row.LearningRate,-7:G4}  {row.TestAccuracy:P2}"));
        return 0;
    }

    private int RunThroughput(ParseResult r)
    {
        var settings = Settings(r);
        Trainer.ResolveDevice(settings.Device);
        var display = Display(r);
        using var data = LoadData(r, settings, display);
        var rounds = Positive(r.GetValue(_rounds), "--rounds");
        var steps = Positive(r.GetValue(_steps), "--steps");
        display.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"Throughput: {settings.Model}{(settings.Model == ModelFactory.CifarResNetName ? $"-{settings.Depth}" : "")}, batch {settings.BatchSize}, {(settings.ChannelsLast ? "channels_last" : "NCHW")}, {torch.get_num_threads()} threads"));
        var result = ThroughputComparison.Run(settings, data.Train, rounds, steps, display);
        display.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"Throughput over {result.StepsEach} steps of batch {settings.BatchSize} each: ours {result.OursImagesPerSecond:F1} img/s, TorchSharp nn.GroupNorm {result.BuiltinImagesPerSecond:F1} img/s, ratio ours/built-in {result.Ratio:F3}{(result.OursFaultsPerStep is double of && result.BuiltinFaultsPerStep is double bf ? $"; minor page faults per step: ours {of:F0}, built-in {bf:F0}" : "")}"));
        return 0;
    }
}
