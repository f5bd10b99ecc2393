using GroupNormalization;
using static TorchSharp.torch;

// Outside GroupNormalization on purpose, with exactly the two usings a TorchSharp user writes: if
// GroupNorm were ambiguous with anything `using static TorchSharp.torch` brings in, this file would not
// compile. NUnit is therefore named in full below.
namespace GroupNormUsage;

public sealed class UsingDirectivesCompileTests
{
    [NUnit.Framework.Test]
    public void GroupNormResolvesWithTorchStaticUsing()
    {
        using var scope = NewDisposeScope();
        using var norm = new GroupNorm(32, 256);
        var y = norm.forward(randn(2, 256, 3, 3));
        NUnit.Framework.Assert.That(y.shape, NUnit.Framework.Is.EqualTo(new long[] { 2, 256, 3, 3 }));
    }
}
