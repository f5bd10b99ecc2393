using System;
using System.Globalization;
using Spectre.Console;

namespace ResNetCifar.Training;

/// <summary>A live progress bar with loss, accuracy and images per second, for an interactive terminal.</summary>
internal sealed class SpectreProgressDisplay : IProgressDisplay
{
    /// <summary>Whether a live display can work here: not when output is redirected or under CI.</summary>
    public static bool IsSupported =>
        !Console.IsOutputRedirected
        && string.IsNullOrEmpty(Environment.GetEnvironmentVariable("CI"))
        && AnsiConsole.Profile.Capabilities.Interactive;

    public void RunEpoch(string title, long totalSteps, Action<Action<StepProgress>> loop)
    {
        AnsiConsole.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
            .Start(context =>
            {
                var task = context.AddTask(Markup.Escape(title), maxValue: totalSteps);
                loop(p =>
                {
                    task.Value = p.Step;
                    task.Description = Markup.Escape(string.Create(CultureInfo.InvariantCulture,
                        $"{title}  loss {p.Loss:F3}  acc {p.Accuracy:P1}  {p.ImagesPerSecond:F0} img/s"));
                });
                task.StopTask();
            });
    }

    public void WriteLine(string text) => AnsiConsole.MarkupLine(Markup.Escape(text));
}
