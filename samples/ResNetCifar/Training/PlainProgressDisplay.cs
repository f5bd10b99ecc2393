using System;
using System.Globalization;
using System.IO;

namespace ResNetCifar.Training;

/// <summary>Progress as ordinary lines, about twenty per epoch: for logs, pipes and CI.</summary>
internal sealed class PlainProgressDisplay(TextWriter output, int linesPerEpoch = 20) : IProgressDisplay
{
    public void RunEpoch(string title, long totalSteps, Action<Action<StepProgress>> loop)
    {
        var every = Math.Max(1, totalSteps / Math.Max(1, linesPerEpoch));
        loop(p =>
        {
            if (p.Step % every == 0 || p.Step == p.TotalSteps)
            {
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{title} step {p.Step}/{p.TotalSteps}  loss {p.Loss:F4}  acc {p.Accuracy:P1}  {p.ImagesPerSecond:F0} img/s  lr {p.LearningRate:G3}"));
                output.Flush();
            }
        });
    }

    public void WriteLine(string text)
    {
        output.WriteLine(text);
        output.Flush();
    }
}
