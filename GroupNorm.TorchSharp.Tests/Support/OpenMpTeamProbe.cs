using System.Runtime.InteropServices;
using GroupNormalization.Kernels.Threading;

namespace GroupNormalization.Tests.Support;

/// <summary>
/// Looks at libtorch's OpenMP team directly, for tests of the team itself: a region that runs a body once
/// on every thread (no work sharing), a thread's number in its team, and the runtime's limit on a team's size. The library needs neither,
/// so they live here, on the runtime <see cref="OpenMpTeam"/> found.
/// </summary>
internal static unsafe class OpenMpTeamProbe
{
    private static readonly delegate* unmanaged<int> s_threadLimit = Lookup("omp_get_thread_limit");
    private static readonly delegate* unmanaged<int> s_threadNum = Lookup("omp_get_thread_num");

    /// <summary>This thread's number in its team (0 outside a region).</summary>
    public static int ThreadNum => s_threadNum();

    /// <summary>The most threads the runtime gives a team (OMP_THREAD_LIMIT), or int.MaxValue when it does not say.</summary>
    public static int ThreadLimit => s_threadLimit != null ? s_threadLimit() : int.MaxValue;

    /// <summary>Runs <paramref name="body"/> once on every thread of a team of <paramref name="threads"/>, the caller as thread 0.</summary>
    public static void RunOnEveryThread(int threads, delegate*<void*, void> body, void* state)
    {
        var call = new EveryThread { Body = body, State = state };
        OpenMpTeam.Parallel(&EveryThreadRegion, &call, (uint)threads, 0);
    }

    private static delegate* unmanaged<int> Lookup(string name) =>
        OpenMpTeam.RuntimePath is { } path && NativeLibrary.TryGetExport(NativeLibrary.Load(path), name, out var address)
            ? (delegate* unmanaged<int>)address
            : null;

    private struct EveryThread
    {
        public delegate*<void*, void> Body;
        public void* State;
    }

    [UnmanagedCallersOnly]
    private static void EveryThreadRegion(void* call)
    {
        var c = (EveryThread*)call;
        c->Body(c->State);
    }
}
