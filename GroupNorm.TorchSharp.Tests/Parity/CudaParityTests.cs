using System.Collections.Generic;
using System.Linq;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Parity;

/// <summary>
/// The parity sweep on CUDA, where every input takes the device-generic kernel. Without a GPU each case
/// reports as skipped with the reason, never as passed.
/// </summary>
[TestFixture]
public sealed class CudaParityTests
{
    [SetUp]
    public void RequireCuda()
    {
        if (!torch.cuda.is_available())
            Assert.Ignore("CUDA is not available (torch.cuda.is_available() is false): run with a GPU and -p:TorchSharpBackend=cuda-linux or cuda-windows.");
    }

    public static IEnumerable<TestCaseData> Cases()
    {
        // Every other sweep case keeps the fixture quick while still covering each rank, affine mode and
        // layout, and PyTorch's channels_last shapes (the first eight cases are PyTorch's own).
        var subset = ParityCase.Sweep.Where((_, i) => i < 8 || i % 2 == 0);
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.Float64 })
            foreach (var c in subset)
                yield return new TestCaseData(c, dtype).SetArgDisplayNames($"cuda_{ParityTests.DtypeName(dtype)}_{c.Name}");
    }

    [TestCaseSource(nameof(Cases))]
    public void MatchesNativeGroupNormOnCuda(ParityCase c, ScalarType dtype) =>
        ParityCheck.Run(c, dtype, KernelPath.Default, torch.CUDA);

    [Test]
    public void HalfPrecisionMatchesNativeInFloat32OnCuda([Values(ScalarType.Float16, ScalarType.BFloat16)] ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(71);
        var shape = new long[] { 2, 8, 7, 7 };
        var x = TestTensors.ToChannelsLast(torch.randn(shape, ScalarType.Float32, torch.CUDA).to(dtype));
        var w = (torch.rand(8, ScalarType.Float32, torch.CUDA) + 0.5).to(dtype);
        var b = torch.randn(8, dtype, torch.CUDA);
        var dy = torch.randn(shape, dtype, torch.CUDA);
        var expected = Oracle.Native(x.to(ScalarType.Float32), 4, w.to(ScalarType.Float32), b.to(ScalarType.Float32), 1e-5, dy.to(ScalarType.Float32));
        var actual = Oracle.Ours(KernelPath.Default, x, 4, w, b, 1e-5, dy);
        // As on the CPU: a few roundings to the dtype (2^-9 bfloat16, 2^-12 float16).
        ParityCheck.AssertClose(actual, expected, dtype == ScalarType.BFloat16 ? 1e-2 : 2e-3, "CUDA", KernelPath.Generic, dtype);
        Assert.That(TestTensors.IsChannelsLast(actual.Y), Is.True, "y lost the channels_last format");
    }
}
