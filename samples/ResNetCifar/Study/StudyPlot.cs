using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using ScottPlot;
using ScottPlot.TickGenerators;

namespace ResNetCifar.Study;

/// <summary>
/// The study's figures. <c>study.png</c> is the paper's Figure 1 style: test error against images per
/// BatchNorm slice (b = 32 … 2, left to right), one line per norm, error bars of one std over seeds;
/// GroupNorm's lines are flat by construction (one run per seed serves every b). <c>study-curves.png</c>
/// is test accuracy per epoch, mean over seeds, for the runs that converge slowest and fastest.
/// </summary>
internal static class StudyPlot
{
    private static readonly Color[] Palette = [Colors.OrangeRed, Colors.Blue, Colors.Green, Colors.Purple, Colors.Gray, Colors.Brown];

    public static void SaveErrorByBatch(IReadOnlyList<StudyResult> results, string path, string title)
    {
        var perDevice = results.Where(r => r.View == StudyRun.PerDeviceView).ToList();
        var sizes = StudyPlan.SliceSizes;
        double[] xs = [.. Enumerable.Range(0, sizes.Length).Select(i => (double)i)];
        var plot = new Plot();
        var index = 0;
        void AddLine(string legend, Func<int, SeedSummary> at)
        {
            var summaries = Enumerable.Range(0, sizes.Length).Select(at).ToArray();
            var present = Enumerable.Range(0, sizes.Length).Where(i => summaries[i].Seeds > 0).ToArray();
            if (present.Length == 0) return;
            var x = present.Select(i => xs[i]).ToArray();
            var error = present.Select(i => 100 * (1 - summaries[i].Mean)).ToArray();
            var spread = present.Select(i => double.IsNaN(summaries[i].Std) ? 0 : 100 * summaries[i].Std).ToArray();
            var color = Palette[index++ % Palette.Length];
            var line = plot.Add.Scatter(x, error);
            line.LegendText = legend;
            line.Color = color;
            line.LineWidth = 2;
            line.MarkerSize = 7;
            var bars = plot.Add.ErrorBar(x, error, spread);
            bars.Color = color;
        }
        AddLine("BatchNorm (statistics per slice of b)", i => StudyReport.Summary(perDevice, StudyPlan.BatchNormName, sizes[i]));
        AddLine("GroupNorm (GroupNorm.TorchSharp)", _ => StudyReport.Summary(perDevice, StudyPlan.GroupNormName, 0));
        AddLine("GroupNorm + weight standardization", _ => StudyReport.Summary(perDevice, StudyPlan.WeightStandardizedName, 0));
        plot.Axes.Bottom.TickGenerator = new NumericManual(xs, sizes.Select(b => b.ToString(CultureInfo.InvariantCulture)).ToArray());
        plot.Axes.Bottom.Label.Text = "images per BatchNorm slice (b; emulated images per device)";
        plot.Axes.Left.Label.Text = "test error (%), mean ± std over seeds";
        plot.Axes.Title.Label.Text = title;
        plot.Axes.SetLimitsX(-0.3, sizes.Length - 0.7);
        plot.ShowLegend(Alignment.UpperLeft);
        plot.SavePng(path, 900, 560);
    }

    public static void SaveCurves(IReadOnlyList<(string Legend, IReadOnlyList<StudyResult> Runs)> lines, string path, string title, string yLabel)
    {
        var plot = new Plot();
        // The sweep draws eleven lines: a 20-colour palette keeps every one distinct.
        var palette = new ScottPlot.Palettes.Category20();
        var index = 0;
        foreach (var (legend, runs) in lines)
        {
            if (runs.Count == 0) continue;
            var epochs = runs.Min(r => r.Curve.Count);
            if (epochs == 0) continue;
            var x = Enumerable.Range(1, epochs).Select(e => (double)e).ToArray();
            var y = Enumerable.Range(0, epochs).Select(e => 100 * runs.Average(r => r.Curve[e].TestAccuracy)).ToArray();
            var line = plot.Add.Scatter(x, y);
            line.LegendText = string.Create(CultureInfo.InvariantCulture, $"{legend} ({runs.Count} seed{(runs.Count > 1 ? "s" : "")})");
            line.Color = palette.GetColor(index++);
            line.LineWidth = 2;
            line.MarkerSize = 5;
        }
        plot.Axes.Bottom.Label.Text = "epoch";
        plot.Axes.Left.Label.Text = yLabel;
        plot.Axes.Title.Label.Text = title;
        plot.ShowLegend(Alignment.LowerRight);
        plot.SavePng(path, 900, 560);
    }
}
