using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>
/// e^x on whole vectors, for SiLU's sigmoid. .NET's <c>Vector.Exp</c> ran at about 4 ns per float32 element
/// here (as slow as a scalar loop), which made a fused GroupNorm+SiLU twice as slow as libtorch's unfused pair.
/// <para>
/// Method: x = n·ln2 + r with n = round(x/ln2) and |r| ≤ ln2/2, so e^x = 2ⁿ·e^r. ln2 is split into a short
/// head (exact when multiplied by n) and a tail, so that r is formed without cancellation error; e^r comes
/// from its Taylor series, which on |r| ≤ 0.347 is within 1.2·10⁻⁷ relative after the r⁷ term (float32) and
/// 2·10⁻¹⁶ after the r¹² term (float64); 2ⁿ is built directly in the exponent bits. Inputs are clamped to
/// where 2ⁿ is a normal number: beyond that e^x is 0 or infinite to the sigmoid anyway. NaN stays NaN.
/// </para>
/// <para>
/// The float32 steps are written twice, for <c>Vector&lt;float&gt;</c> and for <c>Vector512&lt;float&gt;</c>: .NET
/// keeps <c>Vector&lt;T&gt;</c> at 256 bits on AVX-512 CPUs, where libtorch's own SiLU runs 512 bits wide, and
/// the exponential is the one place in these kernels where the arithmetic, not memory, sets the speed (see
/// <see cref="SiLU"/>). The two must stay step for step the same.
/// </para>
/// </summary>
internal static class VectorExp
{
    // 1/11!, 1/10!, …, 1/2!, 1, 1: the r¹¹ … r⁰ coefficients after the leading 1/12!.
    private static readonly double[] Coefficients =
    {
        1.0 / 39916800, 1.0 / 3628800, 1.0 / 362880, 1.0 / 40320, 1.0 / 5040, 1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1, 1,
    };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Exp<T>(Vector<T> x) where T : unmanaged =>
        typeof(T) == typeof(float) ? Exp(x.As<T, float>()).As<float, T>() : Exp(x.As<T, double>()).As<double, T>();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<float> Exp(Vector<float> x)
    {
        // Comparisons rather than Min/Max, so that NaN passes through unchanged.
        x = Vector.ConditionalSelect(Vector.GreaterThan(x, new Vector<float>(88.0f)), new Vector<float>(88.0f), x);
        x = Vector.ConditionalSelect(Vector.LessThan(x, new Vector<float>(-87.0f)), new Vector<float>(-87.0f), x);
        var n = Vector.Floor(Vector.MultiplyAddEstimate(x, new Vector<float>(1.44269504f), new Vector<float>(0.5f)));
        var r = Vector.MultiplyAddEstimate(n, new Vector<float>(-0.693359375f), x);
        r = Vector.MultiplyAddEstimate(n, new Vector<float>(2.12194440e-4f), r);
        var p = new Vector<float>(1f / 720);
        p = Vector.MultiplyAddEstimate(p, r, new Vector<float>(1f / 120));
        p = Vector.MultiplyAddEstimate(p, r, new Vector<float>(1f / 24));
        p = Vector.MultiplyAddEstimate(p, r, new Vector<float>(1f / 6));
        p = Vector.MultiplyAddEstimate(p, r, new Vector<float>(0.5f));
        p = Vector.MultiplyAddEstimate(p, r, Vector<float>.One);
        p = Vector.MultiplyAddEstimate(p, r, Vector<float>.One);
        var scale = Vector.AsVectorSingle(Vector.ShiftLeft(Vector.ConvertToInt32(n) + new Vector<int>(127), 23));
        return p * scale;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Exp(Vector512<float> x)
    {
        x = Vector512.ConditionalSelect(Vector512.GreaterThan(x, Vector512.Create(88.0f)), Vector512.Create(88.0f), x);
        x = Vector512.ConditionalSelect(Vector512.LessThan(x, Vector512.Create(-87.0f)), Vector512.Create(-87.0f), x);
        var n = Vector512.Floor(Vector512.MultiplyAddEstimate(x, Vector512.Create(1.44269504f), Vector512.Create(0.5f)));
        var r = Vector512.MultiplyAddEstimate(n, Vector512.Create(-0.693359375f), x);
        r = Vector512.MultiplyAddEstimate(n, Vector512.Create(2.12194440e-4f), r);
        var p = Vector512.Create(1f / 720);
        p = Vector512.MultiplyAddEstimate(p, r, Vector512.Create(1f / 120));
        p = Vector512.MultiplyAddEstimate(p, r, Vector512.Create(1f / 24));
        p = Vector512.MultiplyAddEstimate(p, r, Vector512.Create(1f / 6));
        p = Vector512.MultiplyAddEstimate(p, r, Vector512.Create(0.5f));
        p = Vector512.MultiplyAddEstimate(p, r, Vector512<float>.One);
        p = Vector512.MultiplyAddEstimate(p, r, Vector512<float>.One);
        var scale = Vector512.ShiftLeft(Vector512.ConvertToInt32(n) + Vector512.Create(127), 23).AsSingle();
        return p * scale;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<double> Exp(Vector<double> x)
    {
        x = Vector.ConditionalSelect(Vector.GreaterThan(x, new Vector<double>(709.0)), new Vector<double>(709.0), x);
        x = Vector.ConditionalSelect(Vector.LessThan(x, new Vector<double>(-708.0)), new Vector<double>(-708.0), x);
        var n = Vector.Floor(Vector.MultiplyAddEstimate(x, new Vector<double>(1.4426950408889634), new Vector<double>(0.5)));
        var r = Vector.MultiplyAddEstimate(n, new Vector<double>(-0.693145751953125), x);
        r = Vector.MultiplyAddEstimate(n, new Vector<double>(-1.4286068203094172e-06), r);
        var p = new Vector<double>(1.0 / 479001600);
        foreach (double c in Coefficients) p = Vector.MultiplyAddEstimate(p, r, new Vector<double>(c));
        var scale = Vector.AsVectorDouble(Vector.ShiftLeft(Vector.ConvertToInt64(n) + new Vector<long>(1023), 52));
        return p * scale;
    }
}
