using System;

namespace ResNetCifar.Training;

/// <summary>Where a run reports its progress: a live Spectre.Console bar, plain lines, or nowhere.</summary>
internal interface IProgressDisplay
{
    /// <summary>Runs one epoch's loop; the loop calls the callback it is given after each step.</summary>
    void RunEpoch(string title, long totalSteps, Action<Action<StepProgress>> loop);

    void WriteLine(string text);
}
