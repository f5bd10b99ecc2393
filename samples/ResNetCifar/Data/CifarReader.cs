using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;

namespace ResNetCifar.Data;

/// <summary>
/// Reads CIFAR-10's binary distribution: each record is one label byte followed by 3072 pixel bytes,
/// the 1024 red values of the 32×32 image row by row, then green, then blue. That is already (C, H, W)
/// order, so records are copied as they are.
/// </summary>
internal static class CifarReader
{
    public const int Side = 32;
    public const int Channels = 3;
    public const int ImageBytes = Channels * Side * Side;
    public const int RecordBytes = 1 + ImageBytes;

    public static readonly string[] TrainFiles = ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
    public static readonly string[] TestFiles = ["test_batch.bin"];

    /// <summary>Whether <paramref name="directory"/> holds the whole binary distribution.</summary>
    public static bool IsPresent(string directory) =>
        TrainFiles.Concat(TestFiles).All(f => File.Exists(Path.Combine(directory, f)));

    public static RawImages ReadTrain(string directory) => Read(TrainFiles.Select(f => Path.Combine(directory, f)));

    public static RawImages ReadTest(string directory) => Read(TestFiles.Select(f => Path.Combine(directory, f)));

    public static RawImages Read(IEnumerable<string> files)
    {
        var pixels = new List<byte[]>();
        var labels = new List<byte>();
        foreach (var file in files)
        {
            var bytes = File.ReadAllBytes(file);
            if (bytes.Length == 0 || bytes.Length % RecordBytes != 0)
                throw new InvalidDataException($"{file} is {bytes.Length} bytes, not a whole number of {RecordBytes}-byte CIFAR-10 records.");
            for (var offset = 0; offset < bytes.Length; offset += RecordBytes)
            {
                var label = bytes[offset];
                if (label > 9)
                    throw new InvalidDataException($"{file}: record {offset / RecordBytes} has label {label}; CIFAR-10 labels are 0..9.");
                labels.Add(label);
                pixels.Add(bytes.AsSpan(offset + 1, ImageBytes).ToArray());
            }
        }
        var all = new byte[pixels.Count * ImageBytes];
        for (var i = 0; i < pixels.Count; i++) pixels[i].CopyTo(all, i * ImageBytes);
        return new RawImages(all, labels.ToArray(), Channels, Side, Side);
    }
}
