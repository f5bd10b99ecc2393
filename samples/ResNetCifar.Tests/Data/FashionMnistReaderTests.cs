using System;
using System.Buffers.Binary;
using System.IO;
using System.IO.Compression;
using NUnit.Framework;
using ResNetCifar.Data;

namespace ResNetCifar.Tests.Data;

public sealed class FashionMnistReaderTests
{
    private string _directory = "";

    [SetUp]
    public void CreateDirectory() => _directory = Directory.CreateTempSubdirectory("fashion-test-").FullName;

    [TearDown]
    public void DeleteDirectory() => Directory.Delete(_directory, recursive: true);

    private static void WriteIdx(string path, int magic, int[] dims, byte[] data)
    {
        using var file = File.Create(path);
        using var gzip = new GZipStream(file, CompressionLevel.Fastest);
        var header = new byte[4 * (1 + dims.Length)];
        BinaryPrimitives.WriteInt32BigEndian(header, magic);
        for (var i = 0; i < dims.Length; i++) BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4 + 4 * i), dims[i]);
        gzip.Write(header);
        gzip.Write(data);
    }

    private static byte Pixel(int image, int r, int c) => (byte)(1 + (image * 31 + r * 5 + c) % 255);

    [Test]
    public void ReadsGzippedIdxAndPadsTo32()
    {
        var pixels = new byte[2 * 28 * 28];
        for (var n = 0; n < 2; n++)
            for (var r = 0; r < 28; r++)
                for (var c = 0; c < 28; c++)
                    pixels[(n * 28 + r) * 28 + c] = Pixel(n, r, c);
        WriteIdx(Path.Combine(_directory, "train-images-idx3-ubyte.gz"), 0x803, [2, 28, 28], pixels);
        WriteIdx(Path.Combine(_directory, "train-labels-idx1-ubyte.gz"), 0x801, [2], [7, 2]);

        var raw = FashionMnistReader.ReadTrain(_directory);

        Assert.That(raw.Labels, Is.EqualTo(new byte[] { 7, 2 }));
        Assert.That((raw.Count, raw.Channels, raw.Height, raw.Width), Is.EqualTo((2, 1, 32, 32)));
        // A 2-pixel zero border on every side; the image sits in the middle, unshifted and unflipped.
        Assert.That(raw.Pixels[(1 * 32 + 0) * 32 + 5], Is.Zero);
        Assert.That(raw.Pixels[(1 * 32 + 31) * 32 + 5], Is.Zero);
        Assert.That(raw.Pixels[(0 * 32 + 10) * 32 + 1], Is.Zero);
        Assert.That(raw.Pixels[(0 * 32 + 2) * 32 + 2], Is.EqualTo(Pixel(0, 0, 0)));
        Assert.That(raw.Pixels[(1 * 32 + 2 + 27) * 32 + 2 + 13], Is.EqualTo(Pixel(1, 27, 13)));
    }

    [Test]
    public void RejectsWrongMagicAndCountMismatch()
    {
        var images = Path.Combine(_directory, "images.gz");
        var labels = Path.Combine(_directory, "labels.gz");
        WriteIdx(images, 0x801, [1, 28, 28], new byte[784]);
        WriteIdx(labels, 0x801, [1], [0]);
        Assert.That(() => FashionMnistReader.Read(images, labels), Throws.InstanceOf<InvalidDataException>().With.Message.Contains("magic"));

        WriteIdx(images, 0x803, [2, 28, 28], new byte[2 * 784]);
        Assert.That(() => FashionMnistReader.Read(images, labels), Throws.InstanceOf<InvalidDataException>().With.Message.Contains("labels"));
    }
}
