using System.Collections.Generic;
using System.Globalization;
using System.IO;
using ResNetCifar.Data;
using ResNetCifar.Models;
using ResNetCifar.Training;

namespace ResNetCifar.Study;

/// <summary>
/// Wu &amp; He's figure on our data: GroupNorm and BatchNorm trained at batch sizes 32 down to 2, each on
/// the same number of training images, with the learning rate scaled linearly with the batch size
/// (the base rate belongs to batch size 32). BatchNorm's estimates of the batch statistics get noisy as the
/// batch shrinks; GroupNorm's do not depend on it.
/// </summary>
internal static class BatchSizeStudy
{
    public static readonly int[] BatchSizes = [32, 16, 8, 4, 2];
    public static readonly NormKind[] Norms = [NormKind.Gn, NormKind.Bn];
    public const int BaseBatchSize = 32;

    public static IReadOnlyList<StudyRow> Run(TrainSettings baseSettings, LoadedData data, long imageBudget, string outputDirectory, IProgressDisplay display)
    {
        Directory.CreateDirectory(outputDirectory);
        var csvPath = Path.Combine(outputDirectory, "study.csv");
        var pngPath = Path.Combine(outputDirectory, "study.png");
        var rows = new List<StudyRow>();
        foreach (var batchSize in BatchSizes)
        {
            foreach (var norm in Norms)
            {
                var settings = baseSettings with
                {
                    Norm = norm,
                    BatchSize = batchSize,
                    LearningRate = baseSettings.LearningRate * batchSize / BaseBatchSize,
                    ImageBudget = imageBudget,
                    EvaluateEachEpoch = false,
                    CsvPath = null,
                    CheckpointPath = null,
                    Resume = false,
                };
                display.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"study: {NormName(norm)} batch {batchSize}, lr {settings.LearningRate:G3}, {imageBudget} images…"));
                var result = Trainer.Run(settings, data.Train, data.Test, new SilentProgressDisplay());
                var row = new StudyRow(NormName(norm), batchSize, settings.LearningRate, imageBudget, (imageBudget + batchSize - 1) / batchSize,
                    result.FinalTestAccuracy, result.FinalTestLoss, result.Seconds);
                rows.Add(row);
                display.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"study: {row.Norm} batch {row.BatchSize}: test acc {row.TestAccuracy:P2}, {row.Seconds:F0} s"));
                WriteCsv(csvPath, rows);
            }
        }
        StudyPlot.Save(rows, pngPath, $"ResNet-{baseSettings.Depth} on {data.Train.Name}, {imageBudget} training images per run");
        display.WriteLine($"study: wrote {csvPath} and {pngPath}");
        return rows;
    }

    public static string NormName(NormKind norm) => norm switch
    {
        NormKind.Gn => "GN",
        NormKind.Bn => "BN",
        _ => "GN-builtin",
    };

    public static void WriteCsv(string path, IEnumerable<StudyRow> rows)
    {
        using var writer = new StreamWriter(path);
        writer.WriteLine("norm,batch_size,learning_rate,images,steps,test_accuracy,test_loss,seconds");
        foreach (var r in rows)
        {
            writer.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{r.Norm},{r.BatchSize},{r.LearningRate:G6},{r.Images},{r.Steps},{r.TestAccuracy:F4},{r.TestLoss:F4},{r.Seconds:F1}"));
        }
    }
}
