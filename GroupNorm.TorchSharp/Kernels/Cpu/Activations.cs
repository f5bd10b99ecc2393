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

/// <summary>
/// An activation whose value and gradient are formulas, written once over the width of arithmetic
/// (<see cref="IWidth{TV}"/>) and shared by the scalar, <c>Vector&lt;T&gt;</c> and 512-bit loops of <see cref="Smooth{TF}"/>.
/// </summary>
internal interface ISmoothFormula
{
    static abstract TV Value<TW, TV>(TV z) where TW : struct, IWidth<TV>;

    /// <summary>dy·act′(z).</summary>
    static abstract TV GradientOf<TW, TV>(TV dy, TV z) where TW : struct, IWidth<TV>;
}

/// <summary>The loops' view of a smooth activation (SiLU, GELU): its formula at every width the loops use.</summary>
internal struct Smooth<TF> : IActivation where TF : struct, ISmoothFormula
{
    public static bool IsIdentity => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Apply<T>(Vector<T> z) where T : unmanaged, IFloatingPointIeee754<T> =>
        TF.Value<VectorWidth<T>, Vector<T>>(z);

    public static T Apply<T>(T z) where T : unmanaged, IFloatingPointIeee754<T> => TF.Value<ScalarWidth<T>, T>(z);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Gradient<T>(Vector<T> dy, Vector<T> z) where T : unmanaged, IFloatingPointIeee754<T> =>
        TF.GradientOf<VectorWidth<T>, Vector<T>>(dy, z);

    public static T Gradient<T>(T dy, T z) where T : unmanaged, IFloatingPointIeee754<T> => TF.GradientOf<ScalarWidth<T>, T>(dy, z);

    /// <summary>
    /// float32 pairs go through one 512-bit vector where the CPU has them and <c>Vector&lt;T&gt;</c> is 256 bits
    /// (the JIT's default): measured on an AVX-512 EPYC, a GroupNorm+SiLU forward took 1.18× libtorch's
    /// unfused pair at 256 bits and 0.66× at 512, because libtorch's own SiLU (and GELU) runs 512 bits wide there.
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
        Split(TF.Value<Width512, Vector512<float>>(Join(z0, z1)), out z0, out z1);
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
        Split(TF.GradientOf<Width512, Vector512<float>>(Join(dy0, dy1), Join(z0, z1)), out dy0, out dy1);
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

internal struct SiLUFormula : ISmoothFormula
{
    /// <summary>SiLU(z) = z·σ(z) = z / (1 + e^−z).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TV Value<TW, TV>(TV z) where TW : struct, IWidth<TV> =>
        TW.Divide(z, TW.Add(TW.One, TW.ExpNegated(z)));

    /// <summary>dy·SiLU′(z) = dy·σ·(1 + z·(1 − σ)), σ = 1 / (1 + e^−z).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TV GradientOf<TW, TV>(TV dy, TV z) where TW : struct, IWidth<TV>
    {
        var sigmoid = TW.Divide(TW.One, TW.Add(TW.One, TW.ExpNegated(z)));
        return TW.Multiply(TW.Multiply(dy, sigmoid), TW.Add(TW.One, TW.Multiply(z, TW.Subtract(TW.One, sigmoid))));
    }
}

/// <summary>
/// Exact GELU, z·Φ(z) with Φ the standard normal CDF, as PyTorch's default <c>gelu</c>; .NET has no erf.
/// <para>
/// Φ is built from the lower tail q = Φ(−|z|) = e^(−z²/2)·H(|z|)/2, where H(a) = e^(a²/2)·erfc(a/√2) is smooth
/// and slowly varying on [0, ∞): then Φ(z) = q for z &lt; 0 and 1 − q otherwise, so the lower tail keeps its
/// relative accuracy (libtorch's 0.5·(1 + erf(z/√2)) cancels there: its float32 Φ(−4) is only about 2e-3
/// relative-accurate), and the gradient Φ(z) + z·φ(z) reuses the same exponential, φ(z) = e^(−z²/2)/√(2π).
/// H is a polynomial in t = (a − 4)/(a + 4), which maps [0, ∞) onto [−1, 1): the truncated Chebyshev series
/// of H in t, in Horner form, with 11 terms for float32 and 26 for float64 (relative error of H, evaluated
/// in the type: 5e-7 and 2e-15, mostly from rounding t; the coefficients were computed for this library
/// with mpmath at 40 digits). |z| is capped at 64 because t would be ∞/∞ at an infinite z; the cap costs
/// nothing, since the vector exponential already floors e^(−z²/2) at the smallest normal number of the type
/// (see <see cref="VectorExp"/>), which leaves a tail of that order (about 1e-40 in float32) instead of 0
/// there, far below any tolerance.
/// </para>
/// </summary>
internal struct GeluFormula : ISmoothFormula
{
    private const double Cap = 64;
    private const double InverseSqrtTwoPi = 0.398942280401432677940;

    // Inlined where the loop's JIT inlining budget allows, and compiled fully optimized where it does not
    // (AggressiveOptimization). GELU is about 40 operations at four widths in forward and backward: inlined
    // alone, the larger loops exhausted their budget and called Cdf, the Horner steps and even Width512's
    // operators as unoptimized (tier-0) methods, up to 7× libtorch's unfused pair; never inlined
    // (NoInlining), a call per vector pair cost a third more than inlined code in a tight loop and the suite's
    // median went to 1.9×. Measured with glibc keeping freed memory: median 0.93–0.95× forward.
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    public static TV Value<TW, TV>(TV z) where TW : struct, IWidth<TV> =>
        TW.Multiply(z, Cdf<TW, TV>(z, out _));

    /// <summary>dy·GELU′(z) = dy·(Φ(z) + z·φ(z)).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    public static TV GradientOf<TW, TV>(TV dy, TV z) where TW : struct, IWidth<TV>
    {
        var cdf = Cdf<TW, TV>(z, out var gaussian);
        return TW.Multiply(dy, TW.Add(cdf, TW.Multiply(z, TW.Multiply(gaussian, TW.Constant(InverseSqrtTwoPi)))));
    }

    /// <summary>Φ(z), and e^(−z²/2) for the density.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    private static TV Cdf<TW, TV>(TV z, out TV gaussian) where TW : struct, IWidth<TV>
    {
        var a = TW.Min(TW.Abs(z), TW.Constant(Cap));
        gaussian = TW.ExpNegated(TW.Multiply(TW.Multiply(a, a), TW.Constant(0.5)));
        var t = TW.Divide(TW.Subtract(a, TW.Constant(4)), TW.Add(a, TW.Constant(4)));
        var tail = TW.Multiply(TW.Multiply(gaussian, TW.Constant(0.5)), TW.IsDouble ? TailDouble<TW, TV>(t) : TailSingle<TW, TV>(t));
        return TW.SelectNegative(z, tail, TW.Subtract(TW.One, tail));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    private static TV Step<TW, TV>(TV p, TV t, double c) where TW : struct, IWidth<TV> => TW.MultiplyAdd(p, t, TW.Constant(c));

    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    private static TV TailSingle<TW, TV>(TV t) where TW : struct, IWidth<TV>
    {
        var p = TW.Constant(3.757343438337557e-05);
        p = Step<TW, TV>(p, t, -7.155336788855493e-05);
        p = Step<TW, TV>(p, t, -0.0003542235353961587);
        p = Step<TW, TV>(p, t, 0.0012597452150657773);
        p = Step<TW, TV>(p, t, 0.001005173078738153);
        p = Step<TW, TV>(p, t, -0.016976699233055115);
        p = Step<TW, TV>(p, t, 0.06173187494277954);
        p = Step<TW, TV>(p, t, -0.1434161216020584);
        p = Step<TW, TV>(p, t, 0.24875831604003906);
        p = Step<TW, TV>(p, t, -0.3407953679561615);
        return Step<TW, TV>(p, t, 0.18882128596305847);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    private static TV TailDouble<TW, TV>(TV t) where TW : struct, IWidth<TV>
    {
        var p = TW.Constant(-5.288632997843213e-11);
        p = Step<TW, TV>(p, t, 1.0773051909761527e-10);
        p = Step<TW, TV>(p, t, 7.014388295276771e-10);
        p = Step<TW, TV>(p, t, -7.417401391618838e-10);
        p = Step<TW, TV>(p, t, -4.950364668869241e-09);
        p = Step<TW, TV>(p, t, 7.799578043938462e-10);
        p = Step<TW, TV>(p, t, 2.5297477045096975e-08);
        p = Step<TW, TV>(p, t, 1.8401357978401248e-08);
        p = Step<TW, TV>(p, t, -1.0716313935892421e-07);
        p = Step<TW, TV>(p, t, -1.8824738447288017e-07);
        p = Step<TW, TV>(p, t, 4.130461153814424e-07);
        p = Step<TW, TV>(p, t, 1.3230489578735854e-06);
        p = Step<TW, TV>(p, t, -1.6592868337962143e-06);
        p = Step<TW, TV>(p, t, -8.607157680822108e-06);
        p = Step<TW, TV>(p, t, 9.26325270538947e-06);
        p = Step<TW, TV>(p, t, 5.729670506437526e-05);
        p = Step<TW, TV>(p, t, -9.110981413041807e-05);
        p = Step<TW, TV>(p, t, -0.00037436854166365607);
        p = Step<TW, TV>(p, t, 0.0012776277064190664);
        p = Step<TW, TV>(p, t, 0.0010151241503090138);
        p = Step<TW, TV>(p, t, -0.016984190964422368);
        p = Step<TW, TV>(p, t, 0.061729608212626595);
        p = Step<TW, TV>(p, t, -0.14341481467546788);
        p = Step<TW, TV>(p, t, 0.24875851067852706);
        p = Step<TW, TV>(p, t, -0.3407954430969109);
        return Step<TW, TV>(p, t, 0.18882128260393788);
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

    /// <summary>Whether the lanes are float64 (a formula may need more terms there).</summary>
    static abstract bool IsDouble { get; }

    /// <summary>c in every lane, rounded to the lane type; a literal c folds to a constant once inlined.</summary>
    static abstract TV Constant(double c);

    /// <summary>a·b + c, fused where the CPU has FMA (Horner steps).</summary>
    static abstract TV MultiplyAdd(TV a, TV b, TV c);

    static abstract TV Abs(TV x);

    static abstract TV Min(TV a, TV b);

    /// <summary>Per lane: <paramref name="ifNegative"/> where x &lt; 0, else <paramref name="otherwise"/>.</summary>
    static abstract TV SelectNegative(TV x, TV ifNegative, TV otherwise);
}

internal readonly struct ScalarWidth<T> : IWidth<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    public static T One => T.One;

    public static T Add(T a, T b) => a + b;

    public static T Subtract(T a, T b) => a - b;

    public static T Multiply(T a, T b) => a * b;

    public static T Divide(T a, T b) => a / b;

    public static T ExpNegated(T x) => T.Exp(-x);

    public static bool IsDouble => typeof(T) == typeof(double);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static T Constant(double c)
    {
        if (typeof(T) == typeof(float))
        {
            float single = (float)c;
            return Unsafe.As<float, T>(ref single);
        }
        return Unsafe.As<double, T>(ref c);
    }

    public static T MultiplyAdd(T a, T b, T c) => T.MultiplyAddEstimate(a, b, c);

    public static T Abs(T x) => T.Abs(x);

    public static T Min(T a, T b) => a < b ? a : b;

    public static T SelectNegative(T x, T ifNegative, T otherwise) => x < T.Zero ? ifNegative : otherwise;
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

    public static bool IsDouble => typeof(T) == typeof(double);

    // Not T.CreateTruncating(c): the JIT did not fold that generic conversion, and GELU's 14 constants then cost
    // a call each per vector (the fused GN+GELU ran at 7× libtorch's unfused pair). typeof(T) folds away.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Constant(double c) =>
        typeof(T) == typeof(float) ? new Vector<float>((float)c).As<float, T>() : new Vector<double>(c).As<double, T>();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> MultiplyAdd(Vector<T> a, Vector<T> b, Vector<T> c) =>
        typeof(T) == typeof(float)
            ? Vector.MultiplyAddEstimate(a.As<T, float>(), b.As<T, float>(), c.As<T, float>()).As<float, T>()
            : Vector.MultiplyAddEstimate(a.As<T, double>(), b.As<T, double>(), c.As<T, double>()).As<double, T>();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Abs(Vector<T> x) => Vector.Abs(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Min(Vector<T> a, Vector<T> b) => Vector.Min(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> SelectNegative(Vector<T> x, Vector<T> ifNegative, Vector<T> otherwise) =>
        Vector.ConditionalSelect(Vector.LessThan(x, Vector<T>.Zero), ifNegative, otherwise);
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

    public static bool IsDouble => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Constant(double c) => Vector512.Create((float)c);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> MultiplyAdd(Vector512<float> a, Vector512<float> b, Vector512<float> c) => Vector512.MultiplyAddEstimate(a, b, c);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Abs(Vector512<float> x) => Vector512.Abs(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Min(Vector512<float> a, Vector512<float> b) => Vector512.Min(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> SelectNegative(Vector512<float> x, Vector512<float> ifNegative, Vector512<float> otherwise) =>
        Vector512.ConditionalSelect(Vector512.LessThan(x, Vector512<float>.Zero), ifNegative, otherwise);
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
