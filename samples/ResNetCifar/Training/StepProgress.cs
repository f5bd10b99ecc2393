namespace ResNetCifar.Training;

/// <summary>Running figures of the current epoch, reported while it trains.</summary>
internal readonly record struct StepProgress(long Step, long TotalSteps, double Loss, double Accuracy, double ImagesPerSecond, double LearningRate);
