using System;
using NUnit.Framework;
using TorchSharp;

namespace GroupNormalization.Tests;

/// <summary>
/// Runs once before any test. If TorchSharp's native library cannot load, every test would fail with
/// the same loader error; instead the run stops here with one message that says how to fix it.
/// </summary>
[SetUpFixture]
public sealed class NativeBackendCheck
{
    [OneTimeSetUp]
    public void NativeBackendLoads()
    {
        try
        {
            using var probe = torch.zeros(1);
        }
#pragma warning disable CA1031 // Any failure here means the same thing: the backend is unusable.
        catch (Exception e)
#pragma warning restore CA1031
        {
            var message =
                "GroupNorm.TorchSharp tests: TorchSharp's native backend could not be loaded, so no test can run.\n" +
                $"  Cause: {e.GetBaseException().GetType().Name}: {e.GetBaseException().Message}\n" +
                "  On Debian 12 and other systems with GCC 12's libstdc++, TorchSharp 0.107 needs GLIBCXX_3.4.32:\n" +
                "  run 'sudo tools/setup-linux.sh' (installs libstdc++6 from Debian 13), then run the tests again.";
            Console.Error.WriteLine(message);
            TestContext.Progress.WriteLine(message);
            // Ending the test host reports one aborted run with this message instead of hundreds of failures.
            Environment.Exit(3);
        }
    }
}
