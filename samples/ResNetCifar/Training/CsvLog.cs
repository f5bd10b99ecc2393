using System.Globalization;
using System.IO;

namespace ResNetCifar.Training;

/// <summary>Appends one line per epoch to a CSV file, writing the header when the file starts empty.</summary>
internal sealed class CsvLog(string path, bool append)
{
    private const string Header = "epoch,images,train_loss,train_accuracy,test_loss,test_accuracy,seconds,images_per_second,learning_rate";

    private bool _started = append && File.Exists(path) && new FileInfo(path).Length > 0;

    public void Write(EpochResult r)
    {
        var directory = Path.GetDirectoryName(Path.GetFullPath(path));
        if (directory is not null) Directory.CreateDirectory(directory);
        using var writer = new StreamWriter(path, append: _started);
        if (!_started) writer.WriteLine(Header);
        _started = true;
        writer.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{r.Epoch},{r.Images},{r.TrainLoss:G6},{r.TrainAccuracy:G6},{r.TestLoss:G6},{r.TestAccuracy:G6},{r.Seconds:F2},{r.ImagesPerSecond:F1},{r.LearningRate:G6}"));
    }
}
