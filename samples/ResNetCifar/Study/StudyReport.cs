using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Text;

namespace ResNetCifar.Study;

/// <summary>
/// The study's tables in Markdown (<c>study.md</c>, <c>sweep.md</c>): mean ± std over seeds, BatchNorm's
/// precise-BN and training accuracies, the paper's protocol, and whether the last epochs still moved.
/// </summary>
internal static class StudyReport
{
    /// <summary>How many final epochs the convergence check looks at.</summary>
    public const int TailEpochs = 3;

    public static string Study(IReadOnlyList<StudyResult> results, StudyProtocol protocol, string dataDescription)
    {
        var text = new StringBuilder();
        var perDevice = results.Where(r => r.View == StudyRun.PerDeviceView).ToList();
        text.AppendLine(Invariant($"Data: {dataDescription}. ResNet-{protocol.Depth}, {protocol.Epochs} epochs, {protocol.TotalBatch} images per step, lr {protocol.LearningRate:G3} (cosine, {protocol.WarmupFraction:P0} warm-up), G = {protocol.Groups}."));
        text.AppendLine();
        text.AppendLine("### Test accuracy (%) by images per BatchNorm slice (b), mean ± std over seeds");
        text.AppendLine();
        text.AppendLine("| norm | " + string.Join(" | ", StudyPlan.SliceSizes.Select(b => Invariant($"b = {b}"))) + " |");
        text.AppendLine("|---|" + string.Concat(StudyPlan.SliceSizes.Select(_ => "---:|")));
        text.AppendLine("| BatchNorm | " + string.Join(" | ", StudyPlan.SliceSizes.Select(b => Summary(perDevice, StudyPlan.BatchNormName, b).Percent())) + " |");
        foreach (var flat in new[] { StudyPlan.GroupNormName, StudyPlan.WeightStandardizedName })
        {
            var s = Summary(perDevice, flat, 0);
            if (s.Seeds > 0) text.AppendLine(Invariant($"| {flat} (same run at every b) | ") + string.Join(" | ", StudyPlan.SliceSizes.Select(_ => s.Percent())) + " |");
        }
        text.AppendLine();
        text.AppendLine("### Per configuration: seeds, BatchNorm's statistics, convergence");
        text.AppendLine();
        text.AppendLine(Invariant($"Train accuracy: the last epoch's, in training mode (augmented images, the slice statistics it trained with). Precise BN: test accuracy after re-estimating BatchNorm's running statistics over {protocol.PreciseBatchNormImages} training images. Last-epochs change: the largest |accuracy(last) − accuracy(e)| over the last {TailEpochs} epochs, largest over seeds; compare it with the seeds' std."));
        text.AppendLine();
        text.AppendLine("| configuration | seeds | test acc | precise BN | train acc | last-epochs change | std over seeds | minutes per run |");
        text.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var group in perDevice.GroupBy(r => (r.Norm, r.StatsBatch)).OrderBy(g => g.Key.Norm == StudyPlan.BatchNormName ? 0 : 1).ThenByDescending(g => g.Key.StatsBatch).ThenBy(g => g.Key.Norm))
        {
            AppendRow(text, group.Key.StatsBatch > 0 ? Invariant($"{group.Key.Norm}, b = {group.Key.StatsBatch}") : group.Key.Norm, group.ToList());
        }
        var workers = results.Where(r => r.View == StudyRun.WorkersView).ToList();
        if (workers.Count > 0)
        {
            text.AppendLine();
            text.AppendLine(Invariant($"### The paper's protocol: {protocol.Workers} emulated workers of b images each, lr linear in the total batch, same epochs"));
            text.AppendLine();
            text.AppendLine("| configuration | total batch | lr | seeds | test acc | precise BN | train acc | last-epochs change | std over seeds | minutes per run |");
            text.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            foreach (var group in workers.GroupBy(r => (r.Norm, r.StatsBatch)).OrderBy(g => g.Key.Norm).ThenByDescending(g => g.Key.StatsBatch))
            {
                var first = group.First();
                AppendRow(text, Invariant($"{group.Key.Norm}, b = {group.Key.StatsBatch}"), group.ToList(), Invariant($"{first.TotalBatch} | {first.LearningRate:G3} | "));
            }
        }
        return text.ToString();
    }

    public static string Sweep(IReadOnlyList<StudyResult> results, StudyProtocol protocol, string dataDescription)
    {
        var text = new StringBuilder();
        text.AppendLine(Invariant($"Data: {dataDescription}; accuracy on the validation split. ResNet-{protocol.Depth}, {protocol.TotalBatch} images per step, seed 1; each GN line changes one setting of the protocol ({protocol.Epochs} epochs, lr {protocol.LearningRate:G3}, {protocol.WarmupFraction:P0} warm-up, G = {protocol.Groups}, no weight decay on γ/β)."));
        text.AppendLine();
        text.AppendLine("| variant | epochs | validation acc | train acc | last-epochs change | minutes |");
        text.AppendLine("|---|---:|---:|---:|---:|---:|");
        foreach (var r in results)
        {
            text.AppendLine(Invariant($"| {r.Norm} | {r.Epochs} | {100 * r.TestAccuracy:F2} | {100 * r.TrainAccuracy:F2} | {100 * r.LastEpochsChange(TailEpochs):F2} | {r.Seconds / 60:F1} |"));
        }
        text.AppendLine();
        text.AppendLine("Validation accuracy (%) per epoch:");
        text.AppendLine();
        var longest = results.Max(r => r.Curve.Count);
        text.AppendLine("| variant | " + string.Join(" | ", Enumerable.Range(1, longest)) + " |");
        text.AppendLine("|---|" + string.Concat(Enumerable.Range(1, longest).Select(_ => "---:|")));
        foreach (var r in results)
            text.AppendLine(Invariant($"| {r.Norm} | ") + string.Join(" | ", Enumerable.Range(0, longest).Select(i => i < r.Curve.Count ? Invariant($"{100 * r.Curve[i].TestAccuracy:F1}") : "")) + " |");
        return text.ToString();
    }

    public static void Save(string path, string title, string body) =>
        File.WriteAllText(path, $"# {title}{Environment.NewLine}{Environment.NewLine}{body}");

    public static SeedSummary Summary(IEnumerable<StudyResult> results, string norm, int statsBatch) =>
        SeedSummary.Of(results.Where(r => r.Norm == norm && r.StatsBatch == statsBatch).Select(r => r.TestAccuracy));

    private static void AppendRow(StringBuilder text, string label, List<StudyResult> runs, string extra = "")
    {
        var test = SeedSummary.Of(runs.Select(r => r.TestAccuracy));
        var precise = SeedSummary.Of(runs.Select(r => r.PreciseBatchNormAccuracy));
        var train = SeedSummary.Of(runs.Select(r => r.TrainAccuracy));
        var change = runs.Max(r => r.LastEpochsChange(TailEpochs));
        var minutes = runs.Average(r => r.Seconds) / 60;
        text.AppendLine(Invariant($"| {label} | {extra}{runs.Count} | {test.Percent()} | {precise.Percent()} | {train.Percent()} | {100 * change:F2} | {(test.Seeds > 1 ? (100 * test.Std).ToString("F2", CultureInfo.InvariantCulture) : "–")} | {minutes:F1} |"));
    }

    private static string Invariant(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
}
