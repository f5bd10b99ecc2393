using System;
using NUnit.Framework;
using TorchSharp;

/// <summary>
/// Runs once before any test. If TorchSharp's native library cannot load, every test would fail with
/// the same loader error; instead the run stops here with one message that says how to fix it.
/// Both test projects compile this file (samples/ResNetCifar.Tests links it).
/// </summary>
/// <remarks>
/// It sits outside any namespace because NUnit applies such a set-up fixture to every test in the
/// assembly, whatever namespace the test is in.
/// </remarks>
[SetUpFixture]
#pragma warning disable CA1050 // See the remarks: a namespace would limit the fixture to that namespace.
public sealed class NativeBackendCheck
#pragma warning restore CA1050
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
            var suite = typeof(NativeBackendCheck).Assembly.GetName().Name;
            var message =
                $"{suite}: TorchSharp's native backend could not be loaded, so no test can run.\n" +
                $"  Cause: {e.GetBaseException().GetType().Name}: {e.GetBaseException().Message}\n" +
                "  On Debian 12 and other systems with GCC 12's libstdc++, TorchSharp 0.107 needs GLIBCXX_3.4.32.\n" +
                "  './build.sh --target=Test' checks this before building and says what to install;\n" +
                "  or run 'sudo tools/setup-linux.sh' (installs libstdc++6 from Debian 13), then run the tests again.";
            Console.Error.WriteLine(message);
            TestContext.Progress.WriteLine(message);
            // Ending the test host reports one aborted run with this message instead of hundreds of failures.
            Environment.Exit(3);
        }
    }
}
