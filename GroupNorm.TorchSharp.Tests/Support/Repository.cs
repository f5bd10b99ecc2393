using System.IO;
using NUnit.Framework;

namespace GroupNormalization.Tests.Support;

/// <summary>Files of the repository the tests run from (documents, sources, packages).</summary>
internal static class Repository
{
    public static string File(string name) => Path.Combine(Root(), name);

    public static string Root()
    {
        for (var directory = new DirectoryInfo(TestContext.CurrentContext.TestDirectory); directory is not null; directory = directory.Parent)
        {
            if (System.IO.File.Exists(Path.Combine(directory.FullName, "GroupNorm.TorchSharp.sln")))
                return directory.FullName;
        }
        throw new AssertionException($"no GroupNorm.TorchSharp.sln above {TestContext.CurrentContext.TestDirectory}");
    }
}
