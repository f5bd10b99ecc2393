using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using NUnit.Framework;
using ResNetCifar.Data;
using ResNetCifar.Study;
using ResNetCifar.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace ResNetCifar.Tests.Study;

public sealed class BatchSizeStudyTests
{
    private static readonly int[] MiddleSlices = [16, 8, 4];
    private static readonly string[] BothNorms = ["BN", "GN"];
    private static readonly StudyProtocol Tiny = StudyProtocol.Quick with { Depth = 8, Epochs = 2, TotalBatch = 32, PreciseBatchNormImages = 32 };

    private static StudyData SyntheticData()
    {
        using var scope = torch.NewDisposeScope();
        var generator = new torch.Generator(7);
        ImageDataset Make(int count)
        {
            var labels = torch.randint(0, 10, new long[] { count }, generator: generator);
            var images = torch.randn(new long[] { count, 1, 32, 32 }, generator: generator).add_(labels.to(ScalarType.Float32).view(-1, 1, 1, 1).div_(5));
            return new ImageDataset("synthetic", images, labels, augment: false);
        }
        return new StudyData(Make(64), Make(32), Make(32));
    }

    [Test]
    public void ThePlanHasTheSeedsOfEveryConfiguration()
    {
        var plan = StudyPlan.Study(StudyProtocol.Default, new TrainSettings());
        var seeds = plan.GroupBy(r => (r.View, r.Norm, r.StatsBatch)).ToDictionary(g => g.Key, g => g.Select(r => r.Seed).OrderBy(s => s).ToArray());
        long[] three = [1, 2, 3], two = [1, 2];
        Assert.Multiple(() =>
        {
            Assert.That(plan.Select(r => r.Key).Distinct().Count(), Is.EqualTo(plan.Count), "keys are unique");
            Assert.That(seeds[(StudyRun.PerDeviceView, "BN", 32)], Is.EqualTo(three));
            Assert.That(seeds[(StudyRun.PerDeviceView, "BN", 2)], Is.EqualTo(three));
            Assert.That(seeds[(StudyRun.PerDeviceView, "GN", 0)], Is.EqualTo(three));
            foreach (var b in MiddleSlices) Assert.That(seeds[(StudyRun.PerDeviceView, "BN", b)], Is.EqualTo(two), $"BN b={b}");
            Assert.That(seeds[(StudyRun.PerDeviceView, "GN+WS", 0)], Is.EqualTo(two));
            foreach (var norm in BothNorms)
            {
                foreach (var b in StudyPlan.WorkerSlices) Assert.That(seeds[(StudyRun.WorkersView, norm, b)], Is.EqualTo(two), $"workers {norm} b={b}");
            }
            Assert.That(plan, Has.Count.EqualTo(25));
        });
    }

    /// <summary>Item 1's rule: only the statistics change with b; item 2's: lr linear in the total batch W·b.</summary>
    [Test]
    public void OnlyTheStatisticsChangeAcrossSlicesAndTheWorkersLearningRateIsLinear()
    {
        var protocol = StudyProtocol.Default;
        var plan = StudyPlan.Study(protocol, new TrainSettings());
        var perDevice = plan.Where(r => r.View == StudyRun.PerDeviceView && r.Seed == 1).ToList();
        Assert.Multiple(() =>
        {
            Assert.That(perDevice.Select(r => (r.Settings.BatchSize, r.Settings.LearningRate, r.Settings.Epochs, r.Settings.Seed, r.Settings.WarmupFraction)).Distinct().Count(), Is.EqualTo(1));
            Assert.That(perDevice.Where(r => r.IsBatchNorm).Select(r => r.Settings.BatchNormSlice), Is.EquivalentTo(StudyPlan.SliceSizes.Cast<int?>()));
            Assert.That(perDevice.Single(r => r.Norm == "GN+WS").Settings.WeightStandardization, Is.True);
            foreach (var run in plan.Where(r => r.View == StudyRun.WorkersView))
            {
                Assert.That(run.Settings.BatchSize, Is.EqualTo(protocol.Workers * run.StatsBatch));
                Assert.That(run.Settings.LearningRate, Is.EqualTo(protocol.LearningRate * protocol.Workers * run.StatsBatch / protocol.TotalBatch).Within(1e-12));
                Assert.That(run.Settings.Epochs, Is.EqualTo(protocol.Epochs));
            }
        });
    }

    /// <summary>Configurations of one seed start from the same convolution weights, whichever norm they use.</summary>
    [Test]
    public void OneSeedGivesTheSameInitialConvolutionsToEveryNorm()
    {
        var plan = StudyPlan.Study(Tiny, new TrainSettings()).Where(r => r.Seed == 1 && r.View == StudyRun.PerDeviceView).ToList();
        var weights = plan.Select(run =>
        {
            using var model = Trainer.CreateModel(run.Settings, 1, torch.CPU, _ => { });
            return model.named_parameters().Where(p => p.name.Contains("conv", StringComparison.Ordinal) || p.name.StartsWith("stem", StringComparison.Ordinal))
                .Select(p => p.parameter.detach().clone().DetachFromDisposeScope()).ToList();
        }).ToList();
        Assert.That(weights[0], Is.Not.Empty);
        for (var i = 1; i < weights.Count; i++)
        {
            Assert.That(weights[i], Has.Count.EqualTo(weights[0].Count), plan[i].ToString());
            for (var j = 0; j < weights[0].Count; j++)
                Assert.That(weights[i][j].eq(weights[0][j]).all().item<bool>(), Is.True, $"{plan[i]}: convolution {j}");
        }
    }

    /// <summary>
    /// The resume path: a restart with the same folder runs only the runs that are not in the CSV yet, keeps
    /// the finished rows as they were, and refuses a folder written under another protocol.
    /// </summary>
    [Test]
    public void ARestartRunsOnlyWhatIsMissing()
    {
        var directory = Directory.CreateTempSubdirectory("study-resume-").FullName;
        var data = SyntheticData();
        try
        {
            var plan = StudyPlan.Study(Tiny, new TrainSettings());
            var first = plan.Take(2).ToList();
            var log = new List<string>();
            BatchSizeStudy.Run(first, data, Tiny, directory, "study", jobs: 2, log.Add);
            var csv = Path.Combine(directory, "study.csv");
            var before = File.ReadAllLines(csv);

            var started = new List<string>();
            var results = BatchSizeStudy.Run(plan.Take(3).ToList(), data, Tiny, directory, "study", jobs: 1,
                line => { if (line.Contains("starts:", StringComparison.Ordinal)) started.Add(line); });
            var after = File.ReadAllLines(csv);

            Assert.Multiple(() =>
            {
                Assert.That(before, Has.Length.EqualTo(3), "header and two runs");
                Assert.That(started, Has.Count.EqualTo(1), "only the missing run trains");
                Assert.That(started[0], Does.Contain(plan[2].ToString()));
                Assert.That(after.Take(3), Is.EqualTo(before), "finished rows are kept as they were");
                Assert.That(after, Has.Length.EqualTo(4));
                Assert.That(results.Select(r => r.Key), Is.EquivalentTo(plan.Take(3).Select(r => r.Key)));
                Assert.That(results.All(r => r.Curve.Count == Tiny.Epochs), Is.True, "per-epoch curves survive the restart");
            });
            Assert.That(() => BatchSizeStudy.Run(first, data, Tiny with { Epochs = 3 }, directory, "study", 1, _ => { }),
                Throws.InvalidOperationException.With.Message.Contains("another protocol"));
        }
        finally
        {
            data.Train.Dispose();
            data.Evaluation.Dispose();
            data.PreciseBatchNorm.Dispose();
            Directory.Delete(directory, recursive: true);
        }
    }

    [Test]
    public void ResultsRoundTripThroughTheCsvFiles()
    {
        var directory = Directory.CreateTempSubdirectory("study-csv-").FullName;
        try
        {
            var results = FakeResults();
            var runs = Path.Combine(directory, "s.csv");
            var epochs = Path.Combine(directory, "s-epochs.csv");
            StudyCsv.Write(runs, epochs, results);
            var read = StudyCsv.Read(runs, epochs);
            Assert.That(read.Select(r => (r.Key, r.TestAccuracy, r.PreciseBatchNormAccuracy, r.Curve.Count)),
                Is.EqualTo(results.Select(r => (r.Key, r.TestAccuracy, r.PreciseBatchNormAccuracy, r.Curve.Count))));
            Assert.That(read[0].Curve.Select(e => e.TestAccuracy), Is.EqualTo(results[0].Curve.Select(e => e.TestAccuracy)));
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Test]
    public void TheReportHasMeanAndStdOverSeedsAndThePlotsAreWritten()
    {
        var results = FakeResults();
        var report = StudyReport.Study(results, StudyProtocol.Default, "synthetic");
        var directory = Directory.CreateTempSubdirectory("study-plot-").FullName;
        try
        {
            var png = Path.Combine(directory, "study.png");
            var curves = Path.Combine(directory, "curves.png");
            StudyPlot.SaveErrorByBatch(results, png, "test");
            StudyPlot.SaveCurves([("GN", results.Where(r => r.Norm == "GN").ToList())], curves, "test", "accuracy");
            Assert.Multiple(() =>
            {
                // BN at b = 32: 80, 82, 84 % → 82.00 ± 2.00; GN: 81 and 83 → 82.00 ± 1.41 in every column.
                Assert.That(report, Does.Contain("| BatchNorm | 82.00 ± 2.00 |"));
                Assert.That(report, Does.Contain("| GN (same run at every b) | 82.00 ± 1.41 | 82.00 ± 1.41 |"));
                Assert.That(new FileInfo(png).Length, Is.GreaterThan(1000));
                Assert.That(new FileInfo(curves).Length, Is.GreaterThan(1000));
            });
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Test]
    public void LastEpochsChangeIsTheLargestMoveToTheFinalAccuracy()
    {
        var result = FakeResult("BN", 32, 1, 0.80, [0.5, 0.79, 0.83, 0.80]);
        Assert.That(result.LastEpochsChange(3), Is.EqualTo(0.03).Within(1e-12));
    }

    private static List<StudyResult> FakeResults() =>
    [
        FakeResult("BN", 32, 1, 0.80, [0.7, 0.8]),
        FakeResult("BN", 32, 2, 0.82, [0.7, 0.82]),
        FakeResult("BN", 32, 3, 0.84, [0.7, 0.84]),
        FakeResult("BN", 2, 1, 0.70, [0.6, 0.7]),
        FakeResult("GN", 0, 1, 0.81, [0.6, 0.81]),
        FakeResult("GN", 0, 2, 0.83, [0.6, 0.83]),
    ];

    private static StudyResult FakeResult(string norm, int b, long seed, double accuracy, double[] curve) =>
        new(StudyRun.PerDeviceView, norm, b, 1, 32, seed, 0.1, curve.Length, 100, accuracy, 0.5, 0.9, norm == "BN" ? accuracy + 0.01 : double.NaN, 60,
            curve.Select((a, i) => new EpochResult(i + 1, 32, 1, 0.5, 0.5, a, 1, 32, 0.1)).ToList());
}
