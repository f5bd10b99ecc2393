using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

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

    /// <summary>Two vectors at once, so that an activation may evaluate them as one wider vector.</summary>
    static abstract void Apply<T>(ref Vector<T> z0, ref Vector<T> z1) where T : unmanaged, IFloatingPointIeee754<T>;

    /// <summary>dy ← dy·act′(z) for two vectors at once.</summary>
    static abstract void Gradient<T>(ref Vector<T> dy0, ref Vector<T> dy1, Vector<T> z0, Vector<T> z1) where T : unmanaged, IFloatingPointIeee754<T>;
}

internal struct Identity : IActivation
{
    public static bool IsIdentity => true;

    public static Vector<T> Apply<T>(Vector<T> z) where T : unmanaged, IFloatingPointIeee754<T> => z;

    public static T Apply<T>(T z) where T : unmanaged, IFloatingPointIeee754<T> => z;

    public static Vector<T> Gradient<T>(Vector<T> dy, Vector<T> z) where T : unmanaged, IFloatingPointIeee754<T> => dy;

    public static T Gradient<T>(T dy, T z) where T : unmanaged, IFloatingPointIeee754<T> => dy;

    public static void Apply<T>(ref Vector<T> z0, ref Vector<T> z1) where T : unmanaged, IFloatingPointIeee754<T>
    {
    }

    public static void Gradient<T>(ref Vector<T> dy0, ref Vector<T> dy1, Vector<T> z0, Vector<T> z1) where T : unmanaged, IFloatingPointIeee754<T>
    {
    }
}

internal struct SiLU : IActivation
{
    public static bool IsIdentity => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Apply<T>(Vector<T> z) where T : unmanaged, IFloatingPointIeee754<T> =>
        Value<VectorWidth<T>, Vector<T>>(z);

    public static T Apply<T>(T z) where T : unmanaged, IFloatingPointIeee754<T> => Value<ScalarWidth<T>, T>(z);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Gradient<T>(Vector<T> dy, Vector<T> z) where T : unmanaged, IFloatingPointIeee754<T> =>
        GradientOf<VectorWidth<T>, Vector<T>>(dy, z);

    public static T Gradient<T>(T dy, T z) where T : unmanaged, IFloatingPointIeee754<T> => GradientOf<ScalarWidth<T>, T>(dy, z);

    /// <summary>
    /// float32 pairs go through one 512-bit vector where the CPU has them and <c>Vector&lt;T&gt;</c> is 256 bits
    /// (the JIT's default): measured on an AVX-512 EPYC, a GroupNorm+SiLU forward took 1.18× libtorch's
    /// unfused pair at 256 bits and 0.66× at 512, because libtorch's own SiLU runs 512 bits wide there.
    /// </summary>
    private static bool Wide<T>() => typeof(T) == typeof(float) && Vector<float>.Count == 8 && Vector512.IsHardwareAccelerated;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Apply<T>(ref Vector<T> z0, ref Vector<T> z1) where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (!Wide<T>())
        {
            z0 = Apply(z0);
            z1 = Apply(z1);
            return;
        }
        Split(Value<Width512, Vector512<float>>(Join(z0, z1)), out z0, out z1);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Gradient<T>(ref Vector<T> dy0, ref Vector<T> dy1, Vector<T> z0, Vector<T> z1) where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (!Wide<T>())
        {
            dy0 = Gradient(dy0, z0);
            dy1 = Gradient(dy1, z1);
            return;
        }
        Split(GradientOf<Width512, Vector512<float>>(Join(dy0, dy1), Join(z0, z1)), out dy0, out dy1);
    }

    /// <summary>SiLU(z) = z·σ(z) = z / (1 + e^−z), for every width of arithmetic (<see cref="IWidth{TV}"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TV Value<TW, TV>(TV z) where TW : struct, IWidth<TV> =>
        TW.Divide(z, TW.Add(TW.One, TW.ExpNegated(z)));

    /// <summary>dy·SiLU′(z) = dy·σ·(1 + z·(1 − σ)), σ = 1 / (1 + e^−z), for every width of arithmetic.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TV GradientOf<TW, TV>(TV dy, TV z) where TW : struct, IWidth<TV>
    {
        var sigmoid = TW.Divide(TW.One, TW.Add(TW.One, TW.ExpNegated(z)));
        return TW.Multiply(TW.Multiply(dy, sigmoid), TW.Add(TW.One, TW.Multiply(z, TW.Subtract(TW.One, sigmoid))));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Join<T>(Vector<T> lower, Vector<T> upper) where T : unmanaged =>
        Vector512.Create(lower.As<T, float>().AsVector256(), upper.As<T, float>().AsVector256());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Split<T>(Vector512<float> v, out Vector<T> lower, out Vector<T> upper) where T : unmanaged
    {
        lower = v.GetLower().AsVector().As<float, T>();
        upper = v.GetUpper().AsVector().As<float, T>();
    }
}

/// <summary>
/// The arithmetic an activation's formula needs, for one width: a scalar, <c>Vector&lt;T&gt;</c>, or a
/// 512-bit float32 vector. .NET's vector types implement no generic-math interfaces, so a formula written
/// once over <typeparamref name="TV"/> reaches each width's operators through this struct operator, which
/// the JIT inlines away.
/// </summary>
internal interface IWidth<TV>
{
    static abstract TV One { get; }

    static abstract TV Add(TV a, TV b);

    static abstract TV Subtract(TV a, TV b);

    static abstract TV Multiply(TV a, TV b);

    static abstract TV Divide(TV a, TV b);

    /// <summary>e^−x, each width with its own exponential (<see cref="VectorExp"/> for vectors).</summary>
    static abstract TV ExpNegated(TV x);
}

internal readonly struct ScalarWidth<T> : IWidth<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    public static T One => T.One;

    public static T Add(T a, T b) => a + b;

    public static T Subtract(T a, T b) => a - b;

    public static T Multiply(T a, T b) => a * b;

    public static T Divide(T a, T b) => a / b;

    public static T ExpNegated(T x) => T.Exp(-x);
}

internal readonly struct VectorWidth<T> : IWidth<Vector<T>> where T : unmanaged, IFloatingPointIeee754<T>
{
    public static Vector<T> One => Vector<T>.One;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Add(Vector<T> a, Vector<T> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Subtract(Vector<T> a, Vector<T> b) => a - b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Multiply(Vector<T> a, Vector<T> b) => a * b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Divide(Vector<T> a, Vector<T> b) => a / b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> ExpNegated(Vector<T> x) => VectorExp.Exp(-x);
}

internal readonly struct Width512 : IWidth<Vector512<float>>
{
    public static Vector512<float> One => Vector512<float>.One;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Add(Vector512<float> a, Vector512<float> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Subtract(Vector512<float> a, Vector512<float> b) => a - b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Multiply(Vector512<float> a, Vector512<float> b) => a * b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Divide(Vector512<float> a, Vector512<float> b) => a / b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> ExpNegated(Vector512<float> x) => VectorExp.Exp(-x);
}

internal struct ReLU : IActivation
{
    public static bool IsIdentity => false;

    // z ≤ 0 → 0 rather than max(z, 0), so that NaN passes through as PyTorch's relu lets it.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Apply<T>(Vector<T> z) where T : unmanaged, IFloatingPointIeee754<T> =>
        Vector.ConditionalSelect(Vector.LessThanOrEqual(z, Vector<T>.Zero), Vector<T>.Zero, z);

    public static T Apply<T>(T z) where T : unmanaged, IFloatingPointIeee754<T> => z <= T.Zero ? T.Zero : z;

    // PyTorch's threshold_backward: 0 where z ≤ 0, dy elsewhere; so a NaN z passes dy through (as its NaN
    // output does in libtorch), while a NaN dy where z ≤ 0 is dropped. "dy where z > 0" would zero both.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Gradient<T>(Vector<T> dy, Vector<T> z) where T : unmanaged, IFloatingPointIeee754<T> =>
        Vector.ConditionalSelect(Vector.LessThanOrEqual(z, Vector<T>.Zero), Vector<T>.Zero, dy);

    public static T Gradient<T>(T dy, T z) where T : unmanaged, IFloatingPointIeee754<T> => z <= T.Zero ? T.Zero : dy;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Apply<T>(ref Vector<T> z0, ref Vector<T> z1) where T : unmanaged, IFloatingPointIeee754<T>
    {
        z0 = Apply(z0);
        z1 = Apply(z1);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Gradient<T>(ref Vector<T> dy0, ref Vector<T> dy1, Vector<T> z0, Vector<T> z1) where T : unmanaged, IFloatingPointIeee754<T>
    {
        dy0 = Gradient(dy0, z0);
        dy1 = Gradient(dy1, z1);
    }
}
