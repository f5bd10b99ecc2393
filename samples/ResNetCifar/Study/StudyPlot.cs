using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using ScottPlot;
using ScottPlot.TickGenerators;

namespace ResNetCifar.Study;

/// <summary>Test accuracy against batch size, one line per norm, batch size on a log2 axis.</summary>
internal static class StudyPlot
{
    public static void Save(IReadOnlyList<StudyRow> rows, string path, string title)
    {
        var plot = new Plot();
        var sizes = rows.Select(r => r.BatchSize).Distinct().OrderBy(b => b).ToArray();
        var ticks = sizes.Select(b => Math.Log2(b)).ToArray();
        var colors = new[] { Colors.Blue, Colors.OrangeRed, Colors.Green };
        var index = 0;
        foreach (var group in rows.GroupBy(r => r.Norm))
        {
            var points = group.OrderBy(r => r.BatchSize).ToArray();
            var line = plot.Add.Scatter(points.Select(r => Math.Log2(r.BatchSize)).ToArray(), points.Select(r => 100 * r.TestAccuracy).ToArray());
            line.LegendText = group.Key == "GN" ? "GroupNorm (GroupNorm.TorchSharp)" : group.Key == "BN" ? "BatchNorm (TorchSharp)" : group.Key;
            line.Color = colors[index++ % colors.Length];
            line.LineWidth = 2;
            line.MarkerSize = 8;
        }
        plot.Axes.Bottom.TickGenerator = new NumericManual(ticks, sizes.Select(b => b.ToString(CultureInfo.InvariantCulture)).ToArray());
        plot.Axes.Bottom.Label.Text = "batch size (images per worker, log2 scale)";
        plot.Axes.Left.Label.Text = "test accuracy (%)";
        plot.Axes.Title.Label.Text = title;
        plot.Axes.SetLimitsX(ticks.Min() - 0.3, ticks.Max() + 0.3);
        plot.ShowLegend(Alignment.LowerLeft);
        plot.SavePng(path, 900, 560);
    }
}
