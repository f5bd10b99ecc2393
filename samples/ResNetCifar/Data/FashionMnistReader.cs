using System;
using System.Buffers.Binary;
using System.IO;
using System.IO.Compression;

namespace ResNetCifar.Data;

/// <summary>
/// Reads Fashion-MNIST's gzipped IDX files (the MNIST layout: a big-endian magic number, the dimension
/// sizes, then unsigned bytes) and pads the 28×28 images with zeros to 32×32 so the CIFAR network
/// applies unchanged. Images keep their single channel: the stem convolution takes 1 input channel.
/// </summary>
internal static class FashionMnistReader
{
    public const string DefaultDirectory = "/usr/share/datasets/fashion-mnist";
    public const int PaddedSide = 32;

    private const int ImageMagic = 0x00000803;
    private const int LabelMagic = 0x00000801;

    public static bool IsPresent(string directory) =>
        File.Exists(Path.Combine(directory, "train-images-idx3-ubyte.gz")) && File.Exists(Path.Combine(directory, "t10k-images-idx3-ubyte.gz"));

    public static RawImages ReadTrain(string directory) =>
        Read(Path.Combine(directory, "train-images-idx3-ubyte.gz"), Path.Combine(directory, "train-labels-idx1-ubyte.gz"));

    public static RawImages ReadTest(string directory) =>
        Read(Path.Combine(directory, "t10k-images-idx3-ubyte.gz"), Path.Combine(directory, "t10k-labels-idx1-ubyte.gz"));

    public static RawImages Read(string imagesGz, string labelsGz)
    {
        var images = ReadIdx(imagesGz, ImageMagic, 3);
        var labels = ReadIdx(labelsGz, LabelMagic, 1);
        var count = images.Dims[0];
        if (labels.Dims[0] != count)
            throw new InvalidDataException($"{imagesGz} has {count} images but {labelsGz} has {labels.Dims[0]} labels.");
        int rows = images.Dims[1], cols = images.Dims[2];
        if (rows > PaddedSide || cols > PaddedSide)
            throw new InvalidDataException($"{imagesGz}: images are {rows}×{cols}, larger than {PaddedSide}×{PaddedSide}.");

        int top = (PaddedSide - rows) / 2, left = (PaddedSide - cols) / 2;
        var padded = new byte[(long)count * PaddedSide * PaddedSide];
        for (var n = 0; n < count; n++)
        {
            for (var r = 0; r < rows; r++)
            {
                images.Data.AsSpan((n * rows + r) * cols, cols)
                    .CopyTo(padded.AsSpan((n * PaddedSide + top + r) * PaddedSide + left, cols));
            }
        }
        return new RawImages(padded, labels.Data, 1, PaddedSide, PaddedSide);
    }

    private static (int[] Dims, byte[] Data) ReadIdx(string path, int expectedMagic, int rank)
    {
        using var file = File.OpenRead(path);
        using var gzip = new GZipStream(file, CompressionMode.Decompress);
        using var buffer = new MemoryStream();
        gzip.CopyTo(buffer);
        var bytes = buffer.GetBuffer().AsSpan(0, (int)buffer.Length);

        var headerBytes = 4 * (1 + rank);
        if (bytes.Length < headerBytes)
            throw new InvalidDataException($"{path} is too short for an IDX header.");
        var magic = BinaryPrimitives.ReadInt32BigEndian(bytes);
        if (magic != expectedMagic)
            throw new InvalidDataException($"{path}: IDX magic 0x{magic:X8}, expected 0x{expectedMagic:X8}.");
        var dims = new int[rank];
        long total = 1;
        for (var i = 0; i < rank; i++)
        {
            dims[i] = BinaryPrimitives.ReadInt32BigEndian(bytes[(4 + 4 * i)..]);
            total *= dims[i];
        }
        if (bytes.Length - headerBytes != total)
            throw new InvalidDataException($"{path}: header promises {total} bytes of data but the file holds {bytes.Length - headerBytes}.");
        return (dims, bytes[headerBytes..].ToArray());
    }
}
