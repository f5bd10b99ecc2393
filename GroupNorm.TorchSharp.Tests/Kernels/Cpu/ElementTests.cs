using System;
using System.Numerics;
using GroupNormalization.Kernels.Cpu;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Kernels.Cpu;

/// <summary>
/// The fused kernels' own float16/bfloat16 conversions, which run on whole vectors with integer arithmetic:
/// against .NET's scalar <see cref="Half"/> conversion and libtorch's bfloat16 rounding, bit for bit, on
/// every 16-bit pattern (reading) and on the float32 values where rounding goes wrong if it is wrong anywhere.
/// </summary>
public sealed unsafe class ElementTests
{
    private static readonly int Lanes = Vector<float>.Count;

    [Test]
    public void Float16LoadIsExactForEveryBitPattern()
    {
        var bits = new ushort[65536];
        for (int i = 0; i < bits.Length; i++) bits[i] = (ushort)i;
        fixed (ushort* p = bits)
        {
            for (int i = 0; i < bits.Length; i += Lanes)
            {
                var v = Float16Element.Load((Half*)(p + i));
                for (int k = 0; k < Lanes; k++)
                {
                    float expected = (float)BitConverter.UInt16BitsToHalf(bits[i + k]);
                    if (float.IsNaN(expected))
                        Assert.That(float.IsNaN(v[k]), Is.True, $"0x{bits[i + k]:X4} must load as NaN");
                    else if (BitConverter.SingleToUInt32Bits(v[k]) != BitConverter.SingleToUInt32Bits(expected))
                        Assert.Fail($"0x{bits[i + k]:X4}: loaded {v[k]:R}, expected {expected:R}");
                }
            }
        }
    }

    [Test]
    public void BFloat16LoadIsExactForEveryBitPattern()
    {
        var bits = new ushort[65536];
        for (int i = 0; i < bits.Length; i++) bits[i] = (ushort)i;
        fixed (ushort* p = bits)
        {
            for (int i = 0; i < bits.Length; i += Lanes)
            {
                var v = BFloat16Element.Load(p + i);
                for (int k = 0; k < Lanes; k++)
                {
                    uint expected = (uint)bits[i + k] << 16;
                    Assert.That(BitConverter.SingleToUInt32Bits(v[k]), Is.EqualTo(expected), $"0x{bits[i + k]:X4}");
                }
            }
        }
    }

    /// <summary>Ties, values just either side of them, subnormals, overflow to infinity, signed zeros, NaN.</summary>
    private static float[] RoundingCases()
    {
        var values = new System.Collections.Generic.List<float>
        {
            0f, -0f, 1f, -1f, 65504f, 65519.99f, 65520f, 65536f, 1e6f, float.MaxValue, float.Epsilon,
            float.PositiveInfinity, float.NegativeInfinity, float.NaN, 6.1035156e-05f, 6.1e-05f, 5.96e-08f,
            2.98e-08f, 2.9802322e-08f, 2.99e-08f, 1e-10f, -3.0517578e-05f,
        };
        // Every float32 whose low 16 bits sit at or around a bfloat16 tie, and around a binary16 tie (bit 12),
        // across the whole exponent range.
        for (uint exponent = 0; exponent < 256; exponent++)
        {
            foreach (uint mantissa in new uint[] { 0x0000, 0x0FFF, 0x1000, 0x1001, 0x2000, 0x3000, 0x7FFF, 0x8000, 0x8001, 0x18000, 0x7FFFFF })
            {
                uint b = (exponent << 23) | mantissa;
                values.Add(BitConverter.UInt32BitsToSingle(b));
                values.Add(BitConverter.UInt32BitsToSingle(b | 0x8000_0000));
            }
        }
        var random = new Random(11);
        for (int i = 0; i < 20000; i++) values.Add(BitConverter.UInt32BitsToSingle((uint)random.NextInt64(0, 1L << 32)));
        while (values.Count % Lanes != 0) values.Add(0.5f);
        return values.ToArray();
    }

    [Test]
    public void Float16StoreRoundsAsTheScalarConversion()
    {
        var values = RoundingCases();
        var stored = new Half[values.Length];
        fixed (float* src = values)
        fixed (Half* dst = stored)
        {
            for (int i = 0; i < values.Length; i += Lanes)
                Float16Element.Store(dst + i, NativeElement<float>.Load(src + i));
        }
        for (int i = 0; i < values.Length; i++)
        {
            var expected = (Half)values[i];
            if (Half.IsNaN(expected))
                Assert.That(Half.IsNaN(stored[i]), Is.True, $"{values[i]:R} must store as NaN");
            else if (BitConverter.HalfToUInt16Bits(stored[i]) != BitConverter.HalfToUInt16Bits(expected))
                Assert.Fail($"{values[i]:R} (0x{BitConverter.SingleToUInt32Bits(values[i]):X8}): stored 0x{BitConverter.HalfToUInt16Bits(stored[i]):X4}, expected 0x{BitConverter.HalfToUInt16Bits(expected):X4}");
        }
    }

    [Test]
    public void BFloat16StoreRoundsAsLibtorch()
    {
        var values = RoundingCases();
        var stored = new ushort[values.Length];
        fixed (float* src = values)
        fixed (ushort* dst = stored)
        {
            for (int i = 0; i < values.Length; i += Lanes)
                BFloat16Element.Store(dst + i, NativeElement<float>.Load(src + i));
        }
        using var scope = torch.NewDisposeScope();
        // Widening back to float32 is exact, so the float's upper 16 bits are libtorch's bfloat16.
        var reference = torch.tensor(values).to(ScalarType.BFloat16).to(ScalarType.Float32).data<float>().ToArray();
        for (int i = 0; i < values.Length; i++)
        {
            if (float.IsNaN(values[i]))
            {
                Assert.That(float.IsNaN(BFloat16Element.Widen(stored[i])), Is.True, $"0x{BitConverter.SingleToUInt32Bits(values[i]):X8} must store as NaN");
                continue;
            }
            var expected = (ushort)(BitConverter.SingleToUInt32Bits(reference[i]) >> 16);
            Assert.That(stored[i], Is.EqualTo(expected), $"{values[i]:R} (0x{BitConverter.SingleToUInt32Bits(values[i]):X8})");
            Assert.That(BFloat16Element.Narrow(values[i]), Is.EqualTo(expected), $"scalar path, {values[i]:R}");
        }
    }

    /// <summary>
    /// The pair store (<see cref="IElement{TS, T}.StorePair"/>), which on AVX-512 rounds bfloat16 as one 512-bit
    /// vector with its own code, against the scalar conversion, bit for bit, on every rounding case: each
    /// element of the pair, at both vector positions. The Test task runs this again with AVX-512 off and with
    /// SIMD off, where the pair store is two plain stores.
    /// </summary>
    [Test]
    public void PairStoresRoundAsTheScalarConversion()
    {
        var values = RoundingCases();
        // Pairs of vectors: pad to a multiple of two vectors.
        var padded = new float[(values.Length + 2 * Lanes - 1) / (2 * Lanes) * 2 * Lanes];
        values.CopyTo(padded, 0);
        var bfloat = new ushort[padded.Length];
        var half = new Half[padded.Length];
        var single = new float[padded.Length];
        var wide = new double[padded.Length];
        var wideSource = Array.ConvertAll(padded, v => (double)v);
        fixed (float* src = padded)
        fixed (double* wideSrc = wideSource)
        fixed (ushort* b = bfloat)
        fixed (Half* h = half)
        fixed (float* f = single)
        fixed (double* d = wide)
        {
            for (int i = 0; i < padded.Length; i += 2 * Lanes)
            {
                var v0 = NativeElement<float>.Load(src + i);
                var v1 = NativeElement<float>.Load(src + i + Lanes);
                BFloat16Element.StorePair(b + i, v0, v1);
                Float16Element.StorePair(h + i, v0, v1);
                NativeElement<float>.StorePair(f + i, v0, v1);
            }
            for (int i = 0; i < padded.Length; i += 2 * Vector<double>.Count)
                NativeElement<double>.StorePair(d + i, NativeElement<double>.Load(wideSrc + i), NativeElement<double>.Load(wideSrc + i + Vector<double>.Count));
        }
        TestContext.Out.WriteLine($"Vector<float>.Count {Lanes}, AVX-512F {System.Runtime.Intrinsics.X86.Avx512F.IsSupported}: " +
            (Lanes == 8 && System.Runtime.Intrinsics.X86.Avx512F.IsSupported ? "the 512-bit bfloat16 pair store runs" : "pair stores are two stores"));
        int mismatches = 0;
        var first = new System.Text.StringBuilder();
        void Check(bool equal, int i, string what)
        {
            if (equal) return;
            if (mismatches++ < 5) first.Append(System.Globalization.CultureInfo.InvariantCulture, $"\n  {what} at {i} (0x{BitConverter.SingleToUInt32Bits(padded[i]):X8})");
        }
        for (int i = 0; i < padded.Length; i++)
        {
            float v = padded[i];
            ushort expectedBFloat = BFloat16Element.Narrow(v);
            Check(float.IsNaN(v) ? float.IsNaN(BFloat16Element.Widen(bfloat[i])) : bfloat[i] == expectedBFloat, i, "bfloat16");
            var expectedHalf = (Half)v;
            Check(Half.IsNaN(expectedHalf) ? Half.IsNaN(half[i]) : BitConverter.HalfToUInt16Bits(half[i]) == BitConverter.HalfToUInt16Bits(expectedHalf), i, "float16");
            Check(BitConverter.SingleToUInt32Bits(single[i]) == BitConverter.SingleToUInt32Bits(v), i, "float32");
            Check(BitConverter.DoubleToUInt64Bits(wide[i]) == BitConverter.DoubleToUInt64Bits(wideSource[i]), i, "float64");
        }
        Assert.That(mismatches, Is.Zero, $"pair stores differing from the scalar conversion:{first}");
    }
}
