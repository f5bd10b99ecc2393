using System;
using System.Collections.Generic;
using System.CommandLine;
using System.Globalization;
using System.IO;
using System.Linq;
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
    private readonly Option<int?> _bnSlice = new("--bn-slice") { Description = "BatchNorm statistics over slices of this many images (emulated per-device BatchNorm; must divide --batch-size)", Recursive = true };
    private readonly Option<bool> _weightStandardization = new("--weight-standardization") { Description = "weight-standardized convolutions (GroupNorm.TorchSharp's WeightStandardizedConv2d) in the CIFAR ResNet", Recursive = true };
    private readonly Option<bool> _normWeightDecay = new("--norm-weight-decay") { Description = "apply weight decay to the norms' γ and β too", Recursive = true };
    private readonly Option<bool> _noFuse = new("--no-fuse") { Description = "with --norm gn: the plain drop-in, each block's norm then a separate ReLU (and add), instead of the fused GroupNorm+ReLU and GroupNorm+add+ReLU layers", Recursive = true };
    private readonly Option<bool> _noRecycle = new("--no-recycle") { Description = "our GroupNorm's outputs from libtorch's allocator instead of the blocks it recycles (GroupNormalization.Memory.recycle_outputs = false)", Recursive = true };
    private readonly Option<bool> _augment = new("--augment") { Description = "random crop and flip for every data set (default: CIFAR only)", Recursive = true };

    private readonly Option<bool> _quick = new("--quick") { Description = "the whole study pipeline on a tiny budget (a few minutes), written to OUT/study-quick" };
    private readonly Option<bool> _sweep = new("--sweep") { Description = "the settings sweep for GroupNorm on a validation split (OUT/sweep) instead of the study" };
    private readonly Option<int> _jobs = new("--jobs") { Description = "runs trained at the same time, one libtorch thread each unless --threads is given", DefaultValueFactory = _ => 2 };
    private readonly Option<string> _out = new("--out") { Description = "parent folder of the study's folders (study, study-quick, sweep, sweep-quick)", DefaultValueFactory = _ => "results" };
    private readonly Option<int> _rounds = new("--rounds") { Description = "alternating rounds", DefaultValueFactory = _ => 6 };
    private readonly Option<int> _steps = new("--steps") { Description = "training steps per model per round", DefaultValueFactory = _ => 50 };
    private readonly Option<bool> _bound = new("--bound") { Description = "also train the network with no norm at all (identity layers): the most any GroupNorm could gain" };
    private readonly Option<string?> _summary = new("--summary") { Description = "also append the result table's rows (markdown) to this file, labelled with the glibc allocator setting" };

    public RootCommand Build()
    {
        var root = new RootCommand("ResNet on CIFAR-10 (or Fashion-MNIST offline) with GroupNorm.TorchSharp: train, study batch sizes, compare throughput.");
        foreach (var option in new Option[] { _model, _depth, _norm, _groups, _channelsPerGroup, _epochs, _batchSize, _lr, _weightDecay, _schedule, _warmup, _seed, _device, _data, _fashion, _offline, _limitTrain, _limitTest, _csv, _checkpoint, _resume, _threads, _channelsLast, _plain, _bnSlice, _weightStandardization, _normWeightDecay, _augment, _noFuse, _noRecycle })
            root.Options.Add(option);
        root.SetAction(result => Guard(() => Train(result)));

        var study = new Command("study", "GroupNorm against BatchNorm whose statistics come from slices of 32, 16, 8, 4, 2 images (emulated per-device BatchNorm), GroupNorm with weight standardization, and the paper's protocol of W workers; seeds, precise BN, per-epoch curves. Writes OUT/study/study.csv, study-epochs.csv, study.md, study.png and study-curves.png; resumes an interrupted study.");
        foreach (var option in new Option[] { _quick, _sweep, _jobs, _out })
            study.Options.Add(option);
        study.SetAction(result => Guard(() => RunStudy(result)));
        root.Subcommands.Add(study);

        var throughput = new Command("throughput", "Training images/s of the same network with TorchSharp's nn.GroupNorm, our GroupNorm as a plain drop-in and our fused blocks, taking turns in one process.");
        throughput.Options.Add(_rounds);
        throughput.Options.Add(_steps);
        throughput.Options.Add(_summary);
        throughput.Options.Add(_bound);
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
        if (r.GetValue(_noRecycle)) GroupNormalization.Memory.recycle_outputs = false;
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
        BatchNormSlice = r.GetValue(_bnSlice),
        WeightStandardization = r.GetValue(_weightStandardization),
        NormWeightDecay = r.GetValue(_normWeightDecay),
        FuseBlocks = !r.GetValue(_noFuse),
        Augment = r.GetValue(_augment) ? true : null,
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
        var jobs = Positive(r.GetValue(_jobs), "--jobs");
        // Two single-threaded runs side by side use two cores better than one run on both (see BatchSizeStudy).
        if (jobs > 1 && !Given(r, _threads)) torch.set_num_threads(1);
        var settings = Settings(r);
        Trainer.ResolveDevice(settings.Device);
        var display = Display(r);
        var protocol = StudyProtocolFrom(r);
        var sweep = r.GetValue(_sweep);
        var name = sweep ? "sweep" : "study";
        var folder = Path.Combine(r.GetValue(_out)!, r.GetValue(_quick) ? name + "-quick" : name);

        var loaded = DatasetLoader.Load(r.GetValue(_data), r.GetValue(_fashion)!, r.GetValue(_offline), 0, 0, protocol.DataSeed);
        var (train, validation) = loaded.Train.Split(protocol.TrainImages, sweep ? protocol.ValidationImages : 0, protocol.DataSeed);
        using var test = loaded.Test.Take(protocol.TestImages, protocol.DataSeed + 1);
        loaded.Dispose();
        using var trainSet = train;
        using var validationSet = validation;
        var evaluation = sweep ? validationSet : test;
        var description = string.Create(CultureInfo.InvariantCulture,
            $"{train.Name}, {train.Count} training images (random crop and flip), {(sweep ? $"{validationSet.Count} validation images carved from the training split" : $"{test.Count} test images")}");
        display.WriteLine($"Data: {description}; {torch.get_num_threads()} libtorch thread(s) per run");
        var data = new StudyData(trainSet, evaluation, trainSet);

        Action<string> log = Synchronized(display);
        if (sweep)
        {
            var results = BatchSizeStudy.Run(StudyPlan.Sweep(protocol, settings), data, protocol, folder, name, jobs, log);
            var report = StudyReport.Sweep(results, protocol, description);
            StudyReport.Save(Path.Combine(folder, "sweep.md"), "Sweep: what closes GroupNorm's gap at the full batch", report);
            StudyPlot.SaveCurves(results.Select(x => (x.Norm, (IReadOnlyList<StudyResult>)[x])).ToList(), Path.Combine(folder, "sweep-curves.png"),
                string.Create(CultureInfo.InvariantCulture, $"Sweep, ResNet-{protocol.Depth} on {train.Name}"), "validation accuracy (%)");
            display.WriteLine(report);
        }
        else
        {
            var results = BatchSizeStudy.Run(StudyPlan.Study(protocol, settings), data, protocol, folder, name, jobs, log);
            var report = StudyReport.Study(results, protocol, description);
            StudyReport.Save(Path.Combine(folder, "study.md"), "Batch-size study: GroupNorm against per-device BatchNorm", report);
            var title = string.Create(CultureInfo.InvariantCulture, $"ResNet-{protocol.Depth} on {train.Name}, {protocol.Epochs} epochs, {protocol.TotalBatch} images per step");
            StudyPlot.SaveErrorByBatch(results, Path.Combine(folder, "study.png"), title);
            IReadOnlyList<StudyResult> Of(string norm, int b) => results.Where(x => x.View == StudyRun.PerDeviceView && x.Norm == norm && x.StatsBatch == b).ToList();
            StudyPlot.SaveCurves(
                [
                    ("BatchNorm, b = 32", Of(StudyPlan.BatchNormName, StudyPlan.SliceSizes[0])),
                    ("BatchNorm, b = 2", Of(StudyPlan.BatchNormName, StudyPlan.SliceSizes[^1])),
                    ("GroupNorm", Of(StudyPlan.GroupNormName, 0)),
                    ("GroupNorm + WS", Of(StudyPlan.WeightStandardizedName, 0)),
                ],
                Path.Combine(folder, "study-curves.png"), title, "test accuracy (%), mean over seeds");
            display.WriteLine(report);
        }
        display.WriteLine($"{name}: wrote {folder}");
        return 0;
    }

    /// <summary>The default or quick protocol, with the training options the command line gives explicitly.</summary>
    private StudyProtocol StudyProtocolFrom(ParseResult r)
    {
        var p = r.GetValue(_quick) ? StudyProtocol.Quick : StudyProtocol.Default;
        if (Given(r, _depth)) p = p with { Depth = r.GetValue(_depth) };
        if (Given(r, _epochs)) p = p with { Epochs = Positive(r.GetValue(_epochs), "--epochs") };
        if (Given(r, _batchSize)) p = p with { TotalBatch = Positive(r.GetValue(_batchSize), "--batch-size") };
        if (Given(r, _lr)) p = p with { LearningRate = r.GetValue(_lr) };
        if (Given(r, _warmup)) p = p with { WarmupFraction = r.GetValue(_warmup) };
        if (Given(r, _weightDecay)) p = p with { WeightDecay = r.GetValue(_weightDecay) };
        if (Given(r, _groups)) p = p with { Groups = r.GetValue(_groups) };
        if (Given(r, _normWeightDecay)) p = p with { NormWeightDecay = r.GetValue(_normWeightDecay) };
        if (Given(r, _limitTrain)) p = p with { TrainImages = r.GetValue(_limitTrain) };
        if (Given(r, _limitTest)) p = p with { TestImages = r.GetValue(_limitTest) };
        if (p.TotalBatch % StudyPlan.SliceSizes[0] != 0)
            throw new ArgumentException($"--batch-size must be a multiple of {StudyPlan.SliceSizes[0]} in the study (its BatchNorm slices are 32 … 2 images), but got {p.TotalBatch}.");
        return p;
    }

    private static bool Given(ParseResult r, Option option) => r.GetResult(option) is { Implicit: false };

    private static Action<string> Synchronized(IProgressDisplay display)
    {
        var gate = new object();
        return text =>
        {
            lock (gate) display.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{DateTime.Now:HH:mm:ss} {text}"));
        };
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
        var result = ThroughputComparison.Run(settings, data.Train, rounds, steps, display, r.GetValue(_bound));
        var allocator = AllocatorSetting();
        var rows = result.Contestants.Select(c => string.Create(CultureInfo.InvariantCulture,
            $"| {allocator} | {(settings.ChannelsLast ? "channels_last" : "NCHW")} | {c.Name} | {c.ImagesPerSecond:F1} | {c.RatioToBuiltin:F3} | {(c.FaultsPerStep is double f ? f.ToString("F0", CultureInfo.InvariantCulture) : "n/a")} |")).ToList();
        display.WriteLine($"Medians over {rounds} rounds of {steps} steps of batch {settings.BatchSize} (ratio: images/s over the built-in's, per round):");
        display.WriteLine(SummaryHeader);
        display.WriteLine(SummaryRule);
        foreach (var row in rows) display.WriteLine(row);
        if (r.GetValue(_summary) is { } summary)
        {
            if (!File.Exists(summary)) File.AppendAllLines(summary, new[] { SummaryHeader, SummaryRule });
            File.AppendAllLines(summary, rows);
        }
        return 0;
    }

    private const string SummaryHeader = "| glibc allocator | layout | network | img/s | ratio to built-in | minor page faults/step |";
    private const string SummaryRule = "|---|---|---|---:|---:|---:|";

    /// <summary>
    /// Which glibc setting this process runs under: page faults, and so speed, depend on whether glibc hands
    /// freed memory back to the system (its defaults) or keeps it (the thresholds the Throughput task sets).
    /// </summary>
    private static string AllocatorSetting() =>
        Environment.GetEnvironmentVariable("MALLOC_TRIM_THRESHOLD_") is { Length: > 0 } trim
            ? $"keeps freed memory (trim {trim}, mmap {Environment.GetEnvironmentVariable("MALLOC_MMAP_THRESHOLD_") ?? "default"})"
            : "defaults";
}
