using System;
using System.Collections.Generic;
using System.IO;
using System.Runtime.InteropServices;

namespace GroupNormalization.Kernels.Threading;

/// <summary>
/// Finds the OpenMP runtime that libtorch already loaded into this process, without ever loading one.
/// <para>
/// libtorch parallelises its CPU ops with OpenMP and ships its own runtime next to itself: libgomp
/// (GCC's, under a hashed name such as <c>libgomp-98b21ff3.so.1</c>) on Linux, LLVM's <c>libomp.dylib</c>
/// on macOS, Intel's <c>libiomp5md.dll</c> on Windows. A second copy of a runtime would bring a second
/// thread team, which is exactly the contention this is meant to remove; so the runtime is looked up
/// among the images already mapped, and opened by that exact path (the loader then hands back the
/// image it has, as the same file is never mapped twice).
/// </para>
/// </summary>
internal static partial class OpenMpRuntimeLocator
{
    /// <summary>A runtime found in the process: its file, the library handle, and how it was chosen.</summary>
    public readonly record struct Found(string Path, IntPtr Handle);

    /// <summary>The runtime libtorch uses, or null with the reason in <paramref name="reason"/>.</summary>
    public static Found? Locate(out string reason)
    {
        IReadOnlyList<string> images;
        try
        {
            // libtorch (and with it its OpenMP runtime) is loaded on TorchSharp's first native call; make sure
            // that has happened, or a lookup made before any tensor exists would find nothing, for good.
            _ = TorchSharp.torch.get_num_threads();
            if (OperatingSystem.IsLinux()) images = LinuxImages();
            else if (OperatingSystem.IsMacOS()) images = MacImages();
            else
            {
                // libiomp5md.dll exports only the variadic __kmpc_fork_call and _vcomp_fork, not GOMP_parallel;
                // calling a variadic entry point needs a test on Windows that this project cannot run.
                reason = "not Linux or macOS: libtorch's Windows OpenMP runtime (libiomp5md) has no GOMP_parallel entry point";
                return null;
            }
        }
#pragma warning disable CA1031 // Any failure to enumerate means "not found": the kernels then use their own threads.
        catch (Exception e)
#pragma warning restore CA1031
        {
            reason = $"could not list the loaded libraries ({e.GetType().Name}: {e.Message})";
            return null;
        }

        var path = Choose(images);
        if (path is null)
        {
            reason = "no OpenMP runtime is loaded next to libtorch";
            return null;
        }
        if (!NativeLibrary.TryLoad(path, out var handle))
        {
            reason = $"{path} is mapped but could not be opened";
            return null;
        }
        reason = "";
        return new Found(path, handle);
    }

    /// <summary>
    /// The OpenMP runtime in libtorch's own folder; failing that, the only one loaded. Two runtimes and no
    /// libtorch folder to tell them apart: none, rather than a guess.
    /// </summary>
    internal static string? Choose(IReadOnlyList<string> images)
    {
        string? torchFolder = null;
        var runtimes = new List<string>();
        foreach (var image in images)
        {
            var name = Path.GetFileName(image);
            if (IsLibTorch(name)) torchFolder ??= Path.GetDirectoryName(image);
            if (IsOpenMpRuntime(name) && !runtimes.Contains(image)) runtimes.Add(image);
        }
        if (torchFolder is not null)
        {
            foreach (var runtime in runtimes)
                if (string.Equals(Path.GetDirectoryName(runtime), torchFolder, StringComparison.Ordinal)) return runtime;
        }
        return runtimes.Count == 1 ? runtimes[0] : null;
    }

    internal static bool IsLibTorch(string fileName) =>
        fileName.StartsWith("libtorch_cpu.", StringComparison.Ordinal) || fileName.StartsWith("libtorch.", StringComparison.Ordinal);

    /// <summary>GCC's libgomp (any hashed suffix) or LLVM's libomp; both export GOMP_parallel.</summary>
    internal static bool IsOpenMpRuntime(string fileName) =>
        (fileName.StartsWith("libgomp", StringComparison.Ordinal) || fileName.StartsWith("libomp.", StringComparison.Ordinal))
        && (fileName.Contains(".so", StringComparison.Ordinal) || fileName.EndsWith(".dylib", StringComparison.Ordinal));

    /// <summary>Every file mapped into this process, from /proc/self/maps (the path is the sixth field).</summary>
    internal static List<string> LinuxImages()
    {
        var images = new List<string>();
        foreach (var line in File.ReadLines("/proc/self/maps"))
        {
            int slash = line.IndexOf('/', StringComparison.Ordinal);
            if (slash < 0) continue;
            var path = line[slash..];
            if (images.Count == 0 || !string.Equals(images[^1], path, StringComparison.Ordinal)) images.Add(path);
        }
        return images;
    }

    private static List<string> MacImages()
    {
        var images = new List<string>();
        uint count = DyldImageCount();
        for (uint i = 0; i < count; i++)
        {
            var name = Marshal.PtrToStringUTF8(DyldGetImageName(i));
            if (name is not null) images.Add(name);
        }
        return images;
    }

    [LibraryImport("/usr/lib/libSystem.B.dylib", EntryPoint = "_dyld_image_count")]
    private static partial uint DyldImageCount();

    [LibraryImport("/usr/lib/libSystem.B.dylib", EntryPoint = "_dyld_get_image_name")]
    private static partial IntPtr DyldGetImageName(uint index);
}
