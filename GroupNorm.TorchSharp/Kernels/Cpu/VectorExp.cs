using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>
/// e^x on whole vectors, for SiLU's sigmoid and GELU's Gaussian. .NET's <c>Vector.Exp</c> ran at about 3.4 ns per float32 element
/// here (as slow as a scalar loop), which made a fused GroupNorm+SiLU twice as slow as libtorch's unfused pair.
/// <para>
/// Method: x = n·ln2 + r with n = round(x/ln2) and |r| ≤ ln2/2, so e^x = 2ⁿ·e^r. ln2 is split into a short
/// head (exact when multiplied by n) and a tail, so that r is formed without cancellation error. float32:
/// n is rounded by adding 1.5·2²³, which leaves n in the sum's low bits, so that 2ⁿ is one shift of those
/// bits into the exponent field; e^r is a degree-5 polynomial fitted for this by least squares on the
/// relative error over |r| ≤ ln2/2 (at most 2.1·10⁻⁷ relative overall, under two float32 ulps, with one
/// multiply-add fewer than the Taylor series of the same accuracy). float64: floor rounding and the
/// Taylor series to r¹² (2·10⁻¹⁶). Multiply-adds are fused where the CPU has FMA. Inputs are clamped to
/// where 2ⁿ is a normal number (beyond it e^x is 0 or infinite to the sigmoid anyway), by comparisons
/// rather than Min/Max, so that NaN passes through.
/// </para>
/// <para>
/// The float32 steps are written twice, for <c>Vector&lt;float&gt;</c> and for <c>Vector512&lt;float&gt;</c>: .NET
/// keeps <c>Vector&lt;T&gt;</c> at 256 bits on AVX-512 CPUs, where libtorch's own SiLU runs 512 bits wide, and
/// the exponential is the one place in these kernels where the arithmetic, not memory, sets the speed (see
/// <see cref="Smooth{TF}"/>). The two must stay step for step the same.
/// </para>
/// </summary>
internal static class VectorExp
{
    private const float Log2E = 1.44269504f;

    /// <summary>1.5·2²³: adding it rounds to an integer and leaves that integer in the low bits (any |n| &lt; 2²²).</summary>
    private const float RoundingShift = 12582912f;

    /// <summary>ln2 = head + tail, with a head of 9 significant bits so that n·head is exact for |n| ≤ 127.</summary>
    private const float Ln2Head = 0.693359375f;

    private const float Ln2Tail = -2.12194440e-4f;

    // e^r ≈ C0 + C1·r + … + C5·r⁵ on |r| ≤ ln2/2 (least squares on the relative error, rounded to float32).
    private const float C0 = 1.0000001192092896f;
    private const float C1 = 0.9999996423721313f;
    private const float C2 = 0.49998900294303894f;
    private const float C3 = 0.1666766256093979f;
    private const float C4 = 0.04191502928733826f;
    private const float C5 = 0.008291716687381268f;

    /// <summary>float32 inputs above this overflow 2ⁿ; below <see cref="Lowest"/>, 2ⁿ is subnormal.</summary>
    private const float Highest = 88.0f;

    private const float Lowest = -87.0f;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Exp<T>(Vector<T> x) where T : unmanaged =>
        typeof(T) == typeof(float) ? Exp(x.As<T, float>()).As<float, T>() : Exp(x.As<T, double>()).As<double, T>();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<float> Exp(Vector<float> x)
    {
        x = Vector.ConditionalSelect(Vector.GreaterThan(x, new Vector<float>(Highest)), new Vector<float>(Highest), x);
        x = Vector.ConditionalSelect(Vector.LessThan(x, new Vector<float>(Lowest)), new Vector<float>(Lowest), x);
        var t = Vector.MultiplyAddEstimate(x, new Vector<float>(Log2E), new Vector<float>(RoundingShift));
        var n = t - new Vector<float>(RoundingShift);
        var r = Vector.MultiplyAddEstimate(n, new Vector<float>(-Ln2Head), x);
        r = Vector.MultiplyAddEstimate(n, new Vector<float>(-Ln2Tail), r);
        var p = new Vector<float>(C5);
        p = Vector.MultiplyAddEstimate(p, r, new Vector<float>(C4));
        p = Vector.MultiplyAddEstimate(p, r, new Vector<float>(C3));
        p = Vector.MultiplyAddEstimate(p, r, new Vector<float>(C2));
        p = Vector.MultiplyAddEstimate(p, r, new Vector<float>(C1));
        p = Vector.MultiplyAddEstimate(p, r, new Vector<float>(C0));
        var scale = Vector.AsVectorSingle(Vector.ShiftLeft(Vector.AsVectorUInt32(t), 23) + new Vector<uint>(127u << 23));
        return p * scale;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Exp(Vector512<float> x)
    {
        x = Vector512.ConditionalSelect(Vector512.GreaterThan(x, Vector512.Create(Highest)), Vector512.Create(Highest), x);
        x = Vector512.ConditionalSelect(Vector512.LessThan(x, Vector512.Create(Lowest)), Vector512.Create(Lowest), x);
        var t = Vector512.MultiplyAddEstimate(x, Vector512.Create(Log2E), Vector512.Create(RoundingShift));
        var n = t - Vector512.Create(RoundingShift);
        var r = Vector512.MultiplyAddEstimate(n, Vector512.Create(-Ln2Head), x);
        r = Vector512.MultiplyAddEstimate(n, Vector512.Create(-Ln2Tail), r);
        var p = Vector512.Create(C5);
        p = Vector512.MultiplyAddEstimate(p, r, Vector512.Create(C4));
        p = Vector512.MultiplyAddEstimate(p, r, Vector512.Create(C3));
        p = Vector512.MultiplyAddEstimate(p, r, Vector512.Create(C2));
        p = Vector512.MultiplyAddEstimate(p, r, Vector512.Create(C1));
        p = Vector512.MultiplyAddEstimate(p, r, Vector512.Create(C0));
        var scale = (Vector512.ShiftLeft(t.AsUInt32(), 23) + Vector512.Create(127u << 23)).AsSingle();
        return p * scale;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<double> Exp(Vector<double> x)
    {
        x = Vector.ConditionalSelect(Vector.GreaterThan(x, new Vector<double>(709.0)), new Vector<double>(709.0), x);
        x = Vector.ConditionalSelect(Vector.LessThan(x, new Vector<double>(-708.0)), new Vector<double>(-708.0), x);
        var n = Vector.Floor(Vector.MultiplyAddEstimate(x, new Vector<double>(1.4426950408889634), new Vector<double>(0.5)));
        // ln2 = 0.693145751953125 (21 significant bits: n·head is exact for |n| ≤ 1023) + 1.4286068203094172e-6.
        var r = Vector.MultiplyAddEstimate(n, new Vector<double>(-0.693145751953125), x);
        r = Vector.MultiplyAddEstimate(n, new Vector<double>(-1.4286068203094172e-06), r);
        // Taylor series, r¹² down to r⁰: 1/12!, 1/11!, …, 1/2!, 1, 1.
        var p = new Vector<double>(1.0 / 479001600);
        p = Vector.MultiplyAddEstimate(p, r, new Vector<double>(1.0 / 39916800));
        p = Vector.MultiplyAddEstimate(p, r, new Vector<double>(1.0 / 3628800));
        p = Vector.MultiplyAddEstimate(p, r, new Vector<double>(1.0 / 362880));
        p = Vector.MultiplyAddEstimate(p, r, new Vector<double>(1.0 / 40320));
        p = Vector.MultiplyAddEstimate(p, r, new Vector<double>(1.0 / 5040));
        p = Vector.MultiplyAddEstimate(p, r, new Vector<double>(1.0 / 720));
        p = Vector.MultiplyAddEstimate(p, r, new Vector<double>(1.0 / 120));
        p = Vector.MultiplyAddEstimate(p, r, new Vector<double>(1.0 / 24));
        p = Vector.MultiplyAddEstimate(p, r, new Vector<double>(1.0 / 6));
        p = Vector.MultiplyAddEstimate(p, r, new Vector<double>(0.5));
        p = Vector.MultiplyAddEstimate(p, r, Vector<double>.One);
        p = Vector.MultiplyAddEstimate(p, r, Vector<double>.One);
        var scale = Vector.AsVectorDouble(Vector.ShiftLeft(Vector.ConvertToInt64(n) + new Vector<long>(1023), 52));
        return p * scale;
    }
}
