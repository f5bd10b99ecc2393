namespace ResNetCifar.Study;

/// <summary>One cell of the batch-size study.</summary>
internal sealed record StudyRow(string Norm, int BatchSize, double LearningRate, long Images, long Steps, double TestAccuracy, double TestLoss, double Seconds);
