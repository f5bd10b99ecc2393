using System.Numerics;
using System.Runtime.CompilerServices;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>Conversions and float64 folding shared by the loops (see <see cref="Reductions"/> for why the folding).</summary>
internal static unsafe class VectorMath
{
    /// <summary>Terms per accumulator lane between folds into float64.</summary>
    public const int FoldTerms = 16;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double ToDouble<T>(T v) where T : unmanaged =>
        typeof(T) == typeof(float) ? Unsafe.As<T, float>(ref v) : Unsafe.As<T, double>(ref v);

    /// <summary>v's lanes as float64, pairwise summed when T is float32 (two lanes per float64 lane).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<double> ToDoubleLanes<T>(Vector<T> v) where T : unmanaged
    {
        if (typeof(T) == typeof(float))
        {
            // WidenLower/WidenUpper rather than Widen(v, out, out): the JIT left the latter as a call.
            var f = v.As<T, float>();
            return Vector.WidenLower(f) + Vector.WidenUpper(f);
        }
        return v.As<T, double>();
    }

    /// <summary>p[0 .. Vector&lt;T&gt;.Count) += v, in float64.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AddToDoubles<T>(double* p, Vector<T> v) where T : unmanaged
    {
        int h = Vector<double>.Count;
        if (typeof(T) == typeof(float))
        {
            var f = v.As<T, float>();
            Unsafe.WriteUnaligned(p, Unsafe.ReadUnaligned<Vector<double>>(p) + Vector.WidenLower(f));
            Unsafe.WriteUnaligned(p + h, Unsafe.ReadUnaligned<Vector<double>>(p + h) + Vector.WidenUpper(f));
        }
        else
        {
            Unsafe.WriteUnaligned(p, Unsafe.ReadUnaligned<Vector<double>>(p) + v.As<T, double>());
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Load<T>(T* p) where T : unmanaged => Unsafe.ReadUnaligned<Vector<T>>(p);
}
