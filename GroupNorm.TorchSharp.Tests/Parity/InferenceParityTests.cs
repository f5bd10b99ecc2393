using System.Linq;
using GroupNormalization.Autograd;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Parity;

/// <summary>
/// The no-graph route (GroupNormFunction's inference branch, the fused kernels' statistics in scratch
/// memory) against libtorch's group_norm over the whole parity sweep, on both kernel families: the graph
/// route's parity tests never take it, since they always ask for gradients.
/// </summary>
[TestFixture]
public sealed class InferenceParityTests
{
    private const double Eps = 1e-5;

    /// <summary>
    /// Both ways a call skips the graph: inputs that require grad under torch.no_grad(), and grad mode on with
    /// nothing requiring grad. y's values, dtype and memory format must be those of a native forward.
    /// </summary>
    [TestCaseSource(typeof(ParityTests), nameof(ParityTests.SweepCases))]
    public void InferenceMatchesNativeGroupNorm(ParityCase c, ScalarType dtype, KernelPath path)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(c.Name.Length * 41 + c.Shape.Sum(s => (int)s));
        var x = TestTensors.Input(c.Shape, c.Layout, dtype, torch.CPU);
        var (w, b) = TestTensors.Parameters(c.Affine, c.Shape[1], dtype, torch.CPU);
        var expected = Oracle.Native(x, c.Groups, w, b, Eps, null).Y;

        Tensor underNoGrad;
        ForwardRoute noGradRoute, nothingRoute;
        using (torch.no_grad())
        using (var forced = path.Force())
        {
            underNoGrad = Functional.group_norm(x.detach().requires_grad_(), c.Groups,
                w?.detach().requires_grad_(), b?.detach().requires_grad_(), Eps);
            noGradRoute = forced.LastForward;
        }
        var nothing = Oracle.Ours(path, x, c.Groups, w, b, Eps, null);
        var nothingRequiresGrad = nothing.Y;
        nothingRoute = nothing.Forward;

        double tolerance = dtype == ScalarType.Float64 ? ParityCheck.Float64Tolerance : ParityCheck.Float32Tolerance;
        Assert.Multiple(() =>
        {
            foreach (var (route, y, taken) in new[] { ("under no_grad", underNoGrad, noGradRoute), ("with nothing requiring grad", nothingRequiresGrad, nothingRoute) })
            {
                // y's values and requires_grad are the same either way: only the route shows the node was skipped.
                Assert.That(taken, Is.EqualTo(ForwardRoute.Inference), $"route {route}");
                double error = TestTensors.RelativeError(y, expected);
                ParityReport.Record("CPU inference", path, dtype, "y", error);
                Assert.That(error, Is.LessThanOrEqualTo(tolerance), $"y {route}: relative error against libtorch");
                Assert.That(y.requires_grad, Is.False, $"y {route} carries a graph");
                Assert.That(y.dtype, Is.EqualTo(dtype), $"y dtype {route}");
                if (c.Layout == Layout.ChannelsLast)
                    Assert.That(TestTensors.IsChannelsLast(y), Is.True, $"y {route} lost the channels_last format");
                if (c.Layout == Layout.Contiguous)
                    Assert.That(y.is_contiguous(), Is.True, $"y {route} of a contiguous input is not contiguous");
            }
        });
    }
}
