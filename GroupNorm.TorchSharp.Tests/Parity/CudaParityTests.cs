using System.Collections.Generic;
using System.Linq;
using GroupNormalization.Tests.Support;
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

    public static IEnumerable<TestCaseData> HalfCases()
    {
        foreach (var dtype in new[] { ScalarType.Float16, ScalarType.BFloat16 })
            foreach (double mean in new[] { 0.0, 1000.0 })
                foreach (var c in ParityTests.HalfShapes)
                    yield return new TestCaseData(c, dtype, mean).SetArgDisplayNames($"cuda_{ParityTests.DtypeName(dtype)}_mean{mean}_{c.Name}");
    }

    /// <summary>The CPU's half-precision bound, against float64 on the GPU.</summary>
    [TestCaseSource(nameof(HalfCases))]
    public void HalfPrecisionIsWithinOneRoundingOfFloat64OnCuda(ParityCase c, ScalarType dtype, double mean) =>
        ParityCheck.RunHalf(c, dtype, KernelPath.Default, torch.CUDA, mean);
}
