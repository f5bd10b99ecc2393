using System;
using System.Runtime.InteropServices;

namespace GroupNormalization.Kernels.Cpu;

/// <summary>Unmanaged scratch memory for a call or a work item, freed on dispose.</summary>
internal readonly unsafe struct Scratch : IDisposable
{
    public readonly void* Pointer;

    public Scratch(long bytes) => Pointer = NativeMemory.Alloc((nuint)Math.Max(bytes, 1));

    public void Dispose() => NativeMemory.Free(Pointer);
}
