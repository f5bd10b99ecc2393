using System.Numerics;
using System.Runtime.CompilerServices;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>
/// The activation fused after the normalization, as a struct parameter of the element-wise loops: the
/// JIT compiles one loop per activation, and <see cref="IsIdentity"/> removes the pre-activation
/// arithmetic from plain GroupNorm's loops altogether. Formulas: <see cref="GroupNormMath"/>.
/// </summary>
internal interface IActivation
{
    static abstract bool IsIdentity { get; }

    static abstract Vector<T> Apply<T>(Vector<T> z) where T : unmanaged, IFloatingPointIeee754<T>;

    static abstract T Apply<T>(T z) where T : unmanaged, IFloatingPointIeee754<T>;

    /// <summary>dz = dy·act′(z).</summary>
    static abstract Vector<T> Gradient<T>(Vector<T> dy, Vector<T> z) where T : unmanaged, IFloatingPointIeee754<T>;

    static abstract T Gradient<T>(T dy, T z) where T : unmanaged, IFloatingPointIeee754<T>;
}

internal struct Identity : IActivation
{
    public static bool IsIdentity => true;

    public static Vector<T> Apply<T>(Vector<T> z) where T : unmanaged, IFloatingPointIeee754<T> => z;

    public static T Apply<T>(T z) where T : unmanaged, IFloatingPointIeee754<T> => z;

    public static Vector<T> Gradient<T>(Vector<T> dy, Vector<T> z) where T : unmanaged, IFloatingPointIeee754<T> => dy;

    public static T Gradient<T>(T dy, T z) where T : unmanaged, IFloatingPointIeee754<T> => dy;
}

internal struct SiLU : IActivation
{
    public static bool IsIdentity => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Apply<T>(Vector<T> z) where T : unmanaged, IFloatingPointIeee754<T> =>
        z / (Vector<T>.One + VectorExp.Exp(-z));

    public static T Apply<T>(T z) where T : unmanaged, IFloatingPointIeee754<T> => z * Sigmoid(z);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Gradient<T>(Vector<T> dy, Vector<T> z) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var s = Sigmoid(z);
        return dy * s * (Vector<T>.One + z * (Vector<T>.One - s));
    }

    public static T Gradient<T>(T dy, T z) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var s = Sigmoid(z);
        return dy * s * (T.One + z * (T.One - s));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<T> Sigmoid<T>(Vector<T> z) where T : unmanaged, IFloatingPointIeee754<T>
    {
        return Vector<T>.One / (Vector<T>.One + VectorExp.Exp(-z));
    }

    private static T Sigmoid<T>(T z) where T : unmanaged, IFloatingPointIeee754<T> => T.One / (T.One + T.Exp(-z));
}

internal struct ReLU : IActivation
{
    public static bool IsIdentity => false;

    // z ≤ 0 → 0 rather than max(z, 0), so that NaN passes through as PyTorch's relu lets it.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Apply<T>(Vector<T> z) where T : unmanaged, IFloatingPointIeee754<T> =>
        Vector.ConditionalSelect(Vector.LessThanOrEqual(z, Vector<T>.Zero), Vector<T>.Zero, z);

    public static T Apply<T>(T z) where T : unmanaged, IFloatingPointIeee754<T> => z <= T.Zero ? T.Zero : z;

    // The gradient flows where the output is positive, as PyTorch's threshold_backward decides it.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Gradient<T>(Vector<T> dy, Vector<T> z) where T : unmanaged, IFloatingPointIeee754<T> =>
        Vector.ConditionalSelect(Vector.GreaterThan(z, Vector<T>.Zero), dy, Vector<T>.Zero);

    public static T Gradient<T>(T dy, T z) where T : unmanaged, IFloatingPointIeee754<T> => z > T.Zero ? dy : T.Zero;
}
