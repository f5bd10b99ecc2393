using System;
using System.IO;
using System.Linq;
using System.Net;
using TorchSharp;

namespace ResNetCifar.Data;

/// <summary>Train and test splits plus a sentence saying which data set it is and why it was chosen.</summary>
internal sealed record LoadedData(ImageDataset Train, ImageDataset Test, string Description) : IDisposable
{
    public void Dispose()
    {
        Train.Dispose();
        Test.Dispose();
    }
}

/// <summary>
/// Picks the data: CIFAR-10 binaries from --data; else a CIFAR-10 download through TorchVision when the
/// machine is online; else Fashion-MNIST from the local copy that tools/setup-linux.sh --with-datasets installs.
/// </summary>
internal static class DatasetLoader
{
    private const string CifarHost = "www.cs.toronto.edu";
    private const string CifarFolder = "cifar-10-batches-bin";

    public static LoadedData Load(string? dataDirectory, string fashionDirectory, bool offline, long limitTrain, long limitTest, long seed)
    {
        var (train, test, name, augment, why) = Choose(dataDirectory, fashionDirectory, offline);
        var (mean, std) = ImageDataset.ChannelStatistics(train);
        using var fullTrain = ImageDataset.FromRaw(name, train, mean, std, augment);
        using var fullTest = ImageDataset.FromRaw(name, test, mean, std, augment: false);
        var trainSet = fullTrain.Take(limitTrain > 0 ? limitTrain : long.MaxValue, seed);
        var testSet = fullTest.Take(limitTest > 0 ? limitTest : long.MaxValue, seed + 1);
        var description = $"{name}: {trainSet.Count} training and {testSet.Count} test images of {train.Channels}×{train.Height}×{train.Width} ({why})";
        return new LoadedData(trainSet, testSet, description);
    }

    private static (RawImages Train, RawImages Test, string Name, bool Augment, string Why) Choose(string? dataDirectory, string fashionDirectory, bool offline)
    {
        if (dataDirectory is not null)
        {
            var cifar = FindCifar(dataDirectory);
            if (cifar is not null)
                return (CifarReader.ReadTrain(cifar), CifarReader.ReadTest(cifar), "CIFAR-10", true, $"binary files in {cifar}");
            if (FashionMnistReader.IsPresent(dataDirectory))
                return (FashionMnistReader.ReadTrain(dataDirectory), FashionMnistReader.ReadTest(dataDirectory), "Fashion-MNIST", false, $"IDX files in {dataDirectory}, padded to 32×32");
            throw new DirectoryNotFoundException($"--data {dataDirectory}: no CIFAR-10 binary files ({string.Join(", ", CifarReader.TrainFiles.Concat(CifarReader.TestFiles))}) and no Fashion-MNIST IDX files there.");
        }

        var cache = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "resnet-cifar");
        var cached = FindCifar(cache);
        if (cached is not null)
            return (CifarReader.ReadTrain(cached), CifarReader.ReadTest(cached), "CIFAR-10", true, $"earlier download in {cached}");

        string reason;
        if (offline)
        {
            reason = "--offline given";
        }
        else if (!IsOnline())
        {
            reason = $"no --data given and {CifarHost} cannot be resolved, so the machine looks offline";
        }
        else
        {
            try
            {
                using (torchvision.datasets.CIFAR10(cache, train: true, download: true)) { }
                var downloaded = FindCifar(cache);
                if (downloaded is not null)
                    return (CifarReader.ReadTrain(downloaded), CifarReader.ReadTest(downloaded), "CIFAR-10", true, $"downloaded by TorchVision to {downloaded}");
                reason = "TorchVision's download left no CIFAR-10 binary files";
            }
            catch (Exception e) when (e is IOException or WebException or InvalidOperationException or System.Net.Http.HttpRequestException)
            {
                reason = $"the CIFAR-10 download failed ({e.Message})";
            }
        }

        if (!FashionMnistReader.IsPresent(fashionDirectory))
            throw new DirectoryNotFoundException($"No data: {reason}, and Fashion-MNIST is not in {fashionDirectory}. Run tools/setup-linux.sh --with-datasets, or pass --data DIR with CIFAR-10's binary files.");
        return (FashionMnistReader.ReadTrain(fashionDirectory), FashionMnistReader.ReadTest(fashionDirectory), "Fashion-MNIST", false,
            $"{reason}; falling back to the local copy in {fashionDirectory}, 1 channel padded to 32×32, no augmentation");
    }

    private static string? FindCifar(string directory)
    {
        if (!Directory.Exists(directory)) return null;
        if (CifarReader.IsPresent(directory)) return directory;
        var nested = Path.Combine(directory, CifarFolder);
        if (CifarReader.IsPresent(nested)) return nested;
        return Directory.EnumerateDirectories(directory, "*", SearchOption.AllDirectories).FirstOrDefault(CifarReader.IsPresent);
    }

    // A name lookup only: nothing is sent to the host unless it resolves.
    private static bool IsOnline()
    {
        try
        {
            var lookup = Dns.GetHostAddressesAsync(CifarHost);
            return lookup.Wait(TimeSpan.FromSeconds(3)) && lookup.Result.Length > 0;
        }
        catch (AggregateException)
        {
            return false;
        }
    }
}
