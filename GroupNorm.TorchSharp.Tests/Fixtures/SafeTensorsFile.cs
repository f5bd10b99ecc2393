using System;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Fixtures;

/// <summary>
/// A minimal reader for the safetensors files that tools/pytorch_reference.py writes: an 8-byte
/// little-endian header length, a JSON header (per tensor: dtype, shape, data_offsets; plus a
/// <c>__metadata__</c> object of strings), then raw little-endian tensor bytes in row-major order.
/// Hand-written so that the tests need no package beyond TorchSharp.
/// </summary>
internal sealed class SafeTensorsFile
{
    private sealed record Entry(string Dtype, long[] Shape, long Begin, long End);

    private readonly byte[] _bytes;
    private readonly long _dataStart;
    private readonly Dictionary<string, Entry> _entries;

    private SafeTensorsFile(byte[] bytes, long dataStart, Dictionary<string, Entry> entries, Dictionary<string, string> metadata)
    {
        _bytes = bytes;
        _dataStart = dataStart;
        _entries = entries;
        Metadata = metadata;
    }

    public IReadOnlyDictionary<string, string> Metadata { get; }

    public static SafeTensorsFile Read(string path)
    {
        var bytes = File.ReadAllBytes(path);
        if (bytes.Length < 8)
            throw new InvalidDataException($"{path}: too short for a safetensors header.");
        var headerLength = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        if (headerLength > (ulong)(bytes.Length - 8))
            throw new InvalidDataException($"{path}: header length {headerLength} runs past the end of the file.");

        using var header = JsonDocument.Parse(Encoding.UTF8.GetString(bytes, 8, (int)headerLength));
        var entries = new Dictionary<string, Entry>(StringComparer.Ordinal);
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        long dataStart = 8 + (long)headerLength;
        long dataLength = bytes.Length - dataStart;

        foreach (var property in header.RootElement.EnumerateObject())
        {
            if (property.Name == "__metadata__")
            {
                foreach (var m in property.Value.EnumerateObject())
                    metadata[m.Name] = m.Value.GetString() ?? "";
                continue;
            }
            var dtype = property.Value.GetProperty("dtype").GetString() ?? "";
            var shape = property.Value.GetProperty("shape").EnumerateArray().Select(d => d.GetInt64()).ToArray();
            var offsets = property.Value.GetProperty("data_offsets").EnumerateArray().Select(d => d.GetInt64()).ToArray();
            var entry = new Entry(dtype, shape, offsets[0], offsets[1]);
            long expectedBytes = shape.Aggregate(1L, (a, b) => a * b) * ElementSize(dtype, path, property.Name);
            if (entry.End - entry.Begin != expectedBytes || entry.Begin < 0 || entry.End > dataLength)
                throw new InvalidDataException($"{path}: tensor '{property.Name}' has offsets [{entry.Begin}, {entry.End}) that do not fit its shape or the file.");
            entries[property.Name] = entry;
        }
        return new SafeTensorsFile(bytes, dataStart, entries, metadata);
    }

    public bool Contains(string name) => _entries.ContainsKey(name);

    /// <summary>
    /// A new CPU tensor with the stored values, in the stored dtype. Half types are widened to float32
    /// on the way in and narrowed back, which is exact in both directions.
    /// </summary>
    public Tensor Load(string name)
    {
        var e = Find(name);
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("The fixture reader assumes a little-endian machine.");
        var raw = _bytes.AsSpan((int)(_dataStart + e.Begin), (int)(e.End - e.Begin));
        return e.Dtype switch
        {
            "F64" => torch.tensor(MemoryMarshal.Cast<byte, double>(raw).ToArray(), e.Shape, ScalarType.Float64),
            "F32" => torch.tensor(MemoryMarshal.Cast<byte, float>(raw).ToArray(), e.Shape, ScalarType.Float32),
            "F16" => FromHalfBits(raw, e.Shape, ScalarType.Float16, bits => (float)BitConverter.UInt16BitsToHalf(bits)),
            // bfloat16 is the upper half of a float32's bit pattern.
            "BF16" => FromHalfBits(raw, e.Shape, ScalarType.BFloat16, bits => BitConverter.Int32BitsToSingle(bits << 16)),
            _ => throw new InvalidDataException($"Tensor '{name}' has dtype {e.Dtype}, which the fixture reader does not handle."),
        };
    }

    private static Tensor FromHalfBits(ReadOnlySpan<byte> raw, long[] shape, ScalarType dtype, Func<ushort, float> widen)
    {
        var bits = MemoryMarshal.Cast<byte, ushort>(raw);
        var widened = new float[bits.Length];
        for (int i = 0; i < bits.Length; i++) widened[i] = widen(bits[i]);
        using var f32 = torch.tensor(widened, shape, ScalarType.Float32);
        return f32.to(dtype);
    }

    private Entry Find(string name) =>
        _entries.TryGetValue(name, out var e) ? e : throw new KeyNotFoundException($"The fixture has no tensor '{name}'.");

    private static long ElementSize(string dtype, string path, string name) => dtype switch
    {
        "F64" => 8,
        "F32" => 4,
        "F16" or "BF16" => 2,
        _ => throw new InvalidDataException($"{path}: tensor '{name}' has dtype {dtype}, which the fixture reader does not handle."),
    };
}
