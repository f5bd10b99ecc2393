namespace ResNetCifar.Training;

/// <summary>One epoch's numbers; test accuracy is NaN when the epoch was not evaluated.</summary>
internal sealed record EpochResult(int Epoch, long Images, double TrainLoss, double TrainAccuracy, double TestLoss, double TestAccuracy, double Seconds, double ImagesPerSecond, double LearningRate);
