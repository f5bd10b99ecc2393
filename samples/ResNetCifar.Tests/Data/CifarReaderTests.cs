using System;
using System.IO;
using NUnit.Framework;
using ResNetCifar.Data;

namespace ResNetCifar.Tests.Data;

public sealed class CifarReaderTests
{
    private string _directory = "";

    [SetUp]
    public void CreateDirectory() => _directory = Directory.CreateTempSubdirectory("cifar-test-").FullName;

    [TearDown]
    public void DeleteDirectory() => Directory.Delete(_directory, recursive: true);

    // A distinct value for every (image, channel, row, column), so any mix-up of the layout shows.
    private static byte Pixel(int image, int c, int h, int w) => (byte)((image * 97 + c * 61 + h * 7 + w * 3) % 256);

    private static byte[] Records(params byte[] labels)
    {
        var bytes = new byte[labels.Length * CifarReader.RecordBytes];
        for (var n = 0; n < labels.Length; n++)
        {
            var offset = n * CifarReader.RecordBytes;
            bytes[offset] = labels[n];
            for (var c = 0; c < 3; c++)
                for (var h = 0; h < 32; h++)
                    for (var w = 0; w < 32; w++)
                        bytes[offset + 1 + c * 1024 + h * 32 + w] = Pixel(n, c, h, w);
        }
        return bytes;
    }

    [Test]
    public void ReadsLabelsAndChannelMajorPixels()
    {
        var path = Path.Combine(_directory, "test_batch.bin");
        File.WriteAllBytes(path, Records(3, 9, 0));

        var raw = CifarReader.Read([path]);

        Assert.That(raw.Labels, Is.EqualTo(new byte[] { 3, 9, 0 }));
        Assert.That((raw.Count, raw.Channels, raw.Height, raw.Width), Is.EqualTo((3, 3, 32, 32)));
        Assert.That(raw.Pixels[((1 * 3 + 2) * 32 + 5) * 32 + 30], Is.EqualTo(Pixel(1, 2, 5, 30)));
        Assert.That(raw.Pixels[((2 * 3 + 0) * 32 + 31) * 32 + 0], Is.EqualTo(Pixel(2, 0, 31, 0)));
    }

    [Test]
    public void DatasetTensorKeepsTheLayout()
    {
        var path = Path.Combine(_directory, "test_batch.bin");
        File.WriteAllBytes(path, Records(4, 1));
        var raw = CifarReader.Read([path]);

        using var data = ImageDataset.FromRaw("cifar", raw, [0, 0, 0], [1, 1, 1], augment: false);

        Assert.That(data.Images.shape, Is.EqualTo(new long[] { 2, 3, 32, 32 }));
        Assert.That(data.Labels.data<long>().ToArray(), Is.EqualTo(new long[] { 4, 1 }));
        Assert.That(data.Images[1, 2, 7, 11].item<float>(), Is.EqualTo(Pixel(1, 2, 7, 11) / 255f).Within(1e-6));
    }

    [Test]
    public void ReadsTheFiveTrainingBatchesInOrder()
    {
        for (var i = 0; i < CifarReader.TrainFiles.Length; i++)
            File.WriteAllBytes(Path.Combine(_directory, CifarReader.TrainFiles[i]), Records((byte)i, (byte)(i + 5)));
        File.WriteAllBytes(Path.Combine(_directory, "test_batch.bin"), Records(8));

        Assert.That(CifarReader.IsPresent(_directory), Is.True);
        Assert.That(CifarReader.ReadTrain(_directory).Labels, Is.EqualTo(new byte[] { 0, 5, 1, 6, 2, 7, 3, 8, 4, 9 }));
        Assert.That(CifarReader.ReadTest(_directory).Labels, Is.EqualTo(new byte[] { 8 }));
    }

    [Test]
    public void RejectsTruncatedFilesAndBadLabels()
    {
        var truncated = Path.Combine(_directory, "short.bin");
        File.WriteAllBytes(truncated, Records(1).AsSpan(0, 100).ToArray());
        Assert.That(() => CifarReader.Read([truncated]), Throws.InstanceOf<InvalidDataException>());

        var badLabel = Path.Combine(_directory, "label.bin");
        File.WriteAllBytes(badLabel, Records(10));
        Assert.That(() => CifarReader.Read([badLabel]), Throws.InstanceOf<InvalidDataException>().With.Message.Contains("label 10"));
    }
}
