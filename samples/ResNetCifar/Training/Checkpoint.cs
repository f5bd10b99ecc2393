using System.Globalization;
using System.IO;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ResNetCifar.Training;

/// <summary>
/// A checkpoint is three files: the model's state_dict at PATH, the optimizer's (momentum buffers) at
/// PATH.optim, and the number of finished epochs at PATH.epoch.
/// </summary>
internal static class Checkpoint
{
    public static void Save(string path, nn.Module model, SGD optimizer, int epochsDone)
    {
        var directory = Path.GetDirectoryName(Path.GetFullPath(path));
        if (directory is not null) Directory.CreateDirectory(directory);
        model.save(path);
        optimizer.save_state_dict(path + ".optim");
        File.WriteAllText(path + ".epoch", epochsDone.ToString(CultureInfo.InvariantCulture));
    }

    /// <summary>Loads a checkpoint into <paramref name="model"/> and <paramref name="optimizer"/>; returns the epochs it had finished.</summary>
    public static int Load(string path, nn.Module model, SGD optimizer)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"--resume: no checkpoint at {path}.", path);
        model.load(path);
        if (File.Exists(path + ".optim")) optimizer.load_state_dict(path + ".optim");
        return File.Exists(path + ".epoch") ? int.Parse(File.ReadAllText(path + ".epoch").Trim(), CultureInfo.InvariantCulture) : 0;
    }
}
