using System;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>
/// How the fused kernels read and write one element type: storage type <typeparamref name="TS"/> in
/// tensor memory, arithmetic in <typeparamref name="T"/> (float32 for the half types, as libtorch's own
/// CPU kernel does). Loops take the element type as a struct parameter, so each (storage, arithmetic)
/// pair is compiled into its own loop with the conversions inlined and no per-element branch.
/// A vector load reads <c>Vector&lt;T&gt;.Count</c> stored elements.
/// </summary>
internal unsafe interface IElement<TS, T>
    where TS : unmanaged
    where T : unmanaged, IFloatingPointIeee754<T>
{
    static abstract Vector<T> Load(TS* p);

    static abstract void Store(TS* p, Vector<T> v);

    /// <summary>Two consecutive vectors, for element types whose conversion is cheaper on one wider vector.</summary>
    static abstract void StorePair(TS* p, Vector<T> v0, Vector<T> v1);

    static abstract T Widen(TS v);

    static abstract TS Narrow(T v);
}

/// <summary>float32 or float64, stored as computed: loads and stores are plain vector moves.</summary>
internal unsafe struct NativeElement<T> : IElement<T, T>
    where T : unmanaged, IFloatingPointIeee754<T>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Load(T* p) => Unsafe.ReadUnaligned<Vector<T>>(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(T* p, Vector<T> v) => Unsafe.WriteUnaligned(p, v);

    public static T Widen(T v) => v;

    public static T Narrow(T v) => v;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void StorePair(T* p, Vector<T> v0, Vector<T> v1)
    {
        Store(p, v0);
        Store(p + Vector<T>.Count, v1);
    }
}

/// <summary>IEEE binary16, converted with integer arithmetic on whole vectors (.NET exposes no F16C conversion).</summary>
internal unsafe struct Float16Element : IElement<Half, float>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<float> Load(Half* p) => HalfBits.ToSingle(HalfBits.LoadWidened((ushort*)p));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(Half* p, Vector<float> v) => HalfBits.StoreNarrowed((ushort*)p, HalfBits.FromSingle(v));

    public static float Widen(Half v) => (float)v;

    public static Half Narrow(float v) => (Half)v;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void StorePair(Half* p, Vector<float> v0, Vector<float> v1)
    {
        Store(p, v0);
        Store(p + Vector<float>.Count, v1);
    }
}

/// <summary>bfloat16, held as its raw 16 bits: the upper half of a float32.</summary>
internal unsafe struct BFloat16Element : IElement<ushort, float>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<float> Load(ushort* p) => Vector.AsVectorSingle(Vector.ShiftLeft(HalfBits.LoadWidened(p), 16));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(ushort* p, Vector<float> v) => HalfBits.StoreNarrowed(p, HalfBits.BFloat16FromSingle(v));

    public static float Widen(ushort v) => BitConverter.UInt32BitsToSingle((uint)v << 16);

    public static ushort Narrow(float v) => (ushort)HalfBits.BFloat16FromSingle(new Vector<float>(v))[0];

    /// <summary>
    /// On AVX-512, the pair is rounded as one 512-bit vector and narrowed by one vpmovdw: the rounding is
    /// most of a bfloat16 kernel's arithmetic, and libtorch's bfloat16 kernels run 512 bits wide there.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void StorePair(ushort* p, Vector<float> v0, Vector<float> v1)
    {
        if (Vector<float>.Count == 8 && Avx512F.IsSupported)
        {
            var bits = Vector512.Create(v0.AsVector256(), v1.AsVector256()).AsUInt32();
            var odd = Vector512.ShiftRightLogical(bits, 16) & Vector512<uint>.One;
            var rounded = Vector512.ShiftRightLogical(bits + Vector512.Create(0x7FFFu) + odd, 16);
            var nan = Vector512.GreaterThan(bits & Vector512.Create(0x7FFF_FFFFu), Vector512.Create(0x7F80_0000u));
            Avx512F.ConvertToVector256UInt16(Vector512.ConditionalSelect(nan, Vector512.Create(0x7FC0u), rounded)).Store(p);
            return;
        }
        Store(p, v0);
        Store(p + Vector<float>.Count, v1);
    }
}

/// <summary>Vector conversions between float32 and the two 16-bit float formats, as integer bit patterns.</summary>
internal static unsafe class HalfBits
{
    private const uint AbsMask = 0x7FFF_FFFF;
    private const uint SingleInfinity = 0x7F80_0000;

    /// <summary>Vector&lt;uint&gt;.Count 16-bit values, zero-extended.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<uint> LoadWidened(ushort* p)
    {
        if (Vector<uint>.Count == 8) return Vector256.WidenLower(Vector128.Load(p).ToVector256Unsafe()).AsVector();
        if (Vector<uint>.Count == 4) return Vector128.WidenLower(Vector64.Load(p).ToVector128Unsafe()).AsVector();
        if (Vector<uint>.Count == 16) return Vector512.WidenLower(Vector256.Load(p).ToVector512Unsafe()).AsVector();
        uint* lanes = stackalloc uint[Vector<uint>.Count];
        for (int i = 0; i < Vector<uint>.Count; i++) lanes[i] = p[i];
        return Unsafe.ReadUnaligned<Vector<uint>>(lanes);
    }

    /// <summary>Stores the low 16 bits of each lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void StoreNarrowed(ushort* p, Vector<uint> v)
    {
        if (Vector<uint>.Count == 8)
        {
            // One vpmovdw where AVX-512 has it; the portable narrow is three instructions.
            if (Avx512F.VL.IsSupported)
            {
                Avx512F.VL.ConvertToVector128UInt16(v.AsVector256()).Store(p);
                return;
            }
            var w = v.AsVector256();
            Vector256.Narrow(w, w).GetLower().Store(p);
        }
        else if (Vector<uint>.Count == 4)
        {
            var w = v.AsVector128();
            Vector128.Narrow(w, w).GetLower().Store(p);
        }
        else if (Vector<uint>.Count == 16)
        {
            var w = v.AsVector512();
            Vector512.Narrow(w, w).GetLower().Store(p);
        }
        else
        {
            for (int i = 0; i < Vector<uint>.Count; i++) p[i] = (ushort)v[i];
        }
    }

    /// <summary>
    /// binary16 → float32, exactly. Shifting the 15 magnitude bits into float32's position leaves the exponent
    /// biased by 15 instead of 127; multiplying by 2¹¹² rebiases it, and also turns binary16 subnormals
    /// (float32 subnormals after the shift) into the right normal values. Infinities and NaNs keep an
    /// all-ones exponent instead.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<float> ToSingle(Vector<uint> h)
    {
        var magnitude = h & new Vector<uint>(0x7FFF);
        var shifted = Vector.ShiftLeft(magnitude, 13);
        var finite = Vector.AsVectorUInt32(Vector.AsVectorSingle(shifted) * new Vector<float>(BitConverter.UInt32BitsToSingle((127 + 112) << 23)));
        var special = shifted | new Vector<uint>(SingleInfinity);
        var bits = Vector.ConditionalSelect(Vector.GreaterThanOrEqual(magnitude, new Vector<uint>(0x7C00)), special, finite);
        return Vector.AsVectorSingle(bits | Vector.ShiftLeft(h & new Vector<uint>(0x8000), 16));
    }

    /// <summary>
    /// float32 → binary16 bits, rounded to nearest even as a hardware conversion does. Normal results: rebias
    /// the exponent and round away the 13 low mantissa bits (a carry into the exponent is the right
    /// answer, and overflow saturates to infinity). Subnormal results: adding 0.5 makes the FPU round the
    /// value to a multiple of 2⁻²⁴, whose count is the subnormal's mantissa. NaN stays a quiet NaN.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<uint> FromSingle(Vector<float> v)
    {
        var bits = Vector.AsVectorUInt32(v);
        var abs = bits & new Vector<uint>(AbsMask);
        var odd = Vector.ShiftRightLogical(abs, 13) & Vector<uint>.One;
        var normal = Vector.ShiftRightLogical(abs - new Vector<uint>(112u << 23) + new Vector<uint>(0xFFF) + odd, 13);
        normal = Vector.Min(normal, new Vector<uint>(0x7C00));
        var subnormal = Vector.AsVectorUInt32(Vector.AsVectorSingle(abs) + new Vector<float>(0.5f)) - new Vector<uint>(0x3F00_0000);
        var result = Vector.ConditionalSelect(Vector.LessThan(abs, new Vector<uint>(0x3880_0000)), subnormal, normal);
        result = Vector.ConditionalSelect(Vector.GreaterThan(abs, new Vector<uint>(SingleInfinity)), new Vector<uint>(0x7E00), result);
        return result | (Vector.ShiftRightLogical(bits, 16) & new Vector<uint>(0x8000));
    }

    /// <summary>float32 → bfloat16 bits, rounded to nearest even; NaN becomes the canonical quiet NaN.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<uint> BFloat16FromSingle(Vector<float> v)
    {
        var bits = Vector.AsVectorUInt32(v);
        var odd = Vector.ShiftRightLogical(bits, 16) & Vector<uint>.One;
        var rounded = Vector.ShiftRightLogical(bits + new Vector<uint>(0x7FFF) + odd, 16);
        var nan = Vector.GreaterThan(bits & new Vector<uint>(AbsMask), new Vector<uint>(SingleInfinity));
        return Vector.ConditionalSelect(nan, new Vector<uint>(0x7FC0), rounded);
    }
}
