using System.Numerics;
using System.Runtime.CompilerServices;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>
/// Whether the epilogue adds a residual r (x's shape, stored type and layout) to the pre-activation:
/// act(x̂·γ + β + r). A type, like <see cref="IActivation"/>, so that the loops of a call without one
/// carry neither the load nor a branch.
/// </summary>
internal interface IResidual
{
    static abstract bool Present { get; }
}

internal struct NoResidual : IResidual
{
    public static bool Present => false;
}

internal struct AddResidual : IResidual
{
    public static bool Present => true;
}

/// <summary>z + r[i] when the call has a residual, z otherwise: the one place the loops add it.</summary>
internal static unsafe class ResidualTerm
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Add<TE, TS, T, TR>(Vector<T> z, TS* r, long i)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
        where TR : struct, IResidual =>
        TR.Present ? z + TE.Load(r + i) : z;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static T Add<TE, TS, T, TR>(T z, TS* r, long i)
        where TE : struct, IElement<TS, T> where TS : unmanaged where T : unmanaged, IFloatingPointIeee754<T>
        where TR : struct, IResidual =>
        TR.Present ? z + TE.Widen(r[i]) : z;
}
