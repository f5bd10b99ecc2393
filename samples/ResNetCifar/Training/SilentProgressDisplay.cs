using System;

namespace ResNetCifar.Training;

/// <summary>Reports nothing: for tests and for the inner runs of the study.</summary>
internal sealed class SilentProgressDisplay : IProgressDisplay
{
    public void RunEpoch(string title, long totalSteps, Action<Action<StepProgress>> loop) => loop(_ => { });

    public void WriteLine(string text) { }
}
