using System;
using System.Collections.Generic;
using System.Linq;
using GroupNormalization.Autograd;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Autograd;

/// <summary>
/// Backward computes only the gradients whose inputs require them (GroupNorm as a network's first layer,
/// a frozen affine), and an incoming gradient that never arrives contributes nothing. Each checked
/// against libtorch's group_norm given the same inputs with the same requires_grad flags.
/// </summary>
[TestFixture]
public sealed class GradientRequestTests
{
    private const double Eps = 1e-5;
    private const long Groups = 3;
    private static readonly long[] Shape = { 2, 6, 5, 4 };

    /// <summary>Which of x, weight and bias require grad: every non-empty combination.</summary>
    public static IEnumerable<TestCaseData> Cases()
    {
        foreach (var path in new[] { KernelPath.Default, KernelPath.Generic })
            foreach (var layout in new[] { Layout.Contiguous, Layout.ChannelsLast })
                for (int mask = 1; mask < 8; mask++)
                {
                    bool x = (mask & 1) != 0, w = (mask & 2) != 0, b = (mask & 4) != 0;
                    string name = string.Join("+", new[] { x ? "x" : null, w ? "weight" : null, b ? "bias" : null }.Where(s => s is not null));
                    yield return new TestCaseData(path, layout, x, w, b).SetArgDisplayNames($"{path}_{layout}_{name}");
                }
    }

    [TestCaseSource(nameof(Cases))]
    public void ComputesExactlyTheRequestedGradients(KernelPath path, Layout layout, bool xGrad, bool wGrad, bool bGrad)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(31);
        var x = TestTensors.Input(Shape, layout, ScalarType.Float32, torch.CPU);
        var w = torch.rand(Shape[1]) + 0.5;
        var b = torch.randn(Shape[1]);
        var dy = torch.randn(Shape);
        int requested = (xGrad ? 1 : 0) + (wGrad ? 1 : 0) + (bGrad ? 1 : 0);

        Assert.Multiple(() =>
        {
            foreach (var activation in Oracle.AllActivations)
            {
                var (ours, held) = Gradients(path, activation, x, w, b, dy, xGrad, wGrad, bGrad, ours: true);
                var (native, _) = Gradients(path, activation, x, w, b, dy, xGrad, wGrad, bGrad, ours: false);
                // Read right after backward: the next GroupNorm call on this thread releases them.
                Assert.That(held.Count, Is.EqualTo(requested), $"{activation}: gradients backward computed; shapes [{string.Join("; ", held.Select(h => string.Join("x", h)))}]");
                var names = new[] { (xGrad, "dx"), (wGrad, "dweight"), (bGrad, "dbias") }.Where(p => p.Item1).Select(p => p.Item2).ToArray();
                for (int i = 0; i < ours.Count; i++)
                {
                    double error = TestTensors.RelativeError(ours[i], native[i]);
                    Assert.That(error, Is.LessThanOrEqualTo(ParityCheck.Float32Tolerance), $"{activation}: {names[i]} against libtorch");
                }
                if (xGrad && layout == Layout.ChannelsLast)
                    Assert.That(TestTensors.IsChannelsLast(ours[0]), Is.True, $"{activation}: dx lost the channels_last format");
            }
        });
    }

    /// <summary>The gradients of (y·dy).sum() for the inputs that require grad, and the shapes our backward held.</summary>
    private static (List<Tensor> Gradients, List<long[]> Held) Gradients(KernelPath path, Activation activation,
        Tensor x, Tensor w, Tensor b, Tensor dy, bool xGrad, bool wGrad, bool bGrad, bool ours)
    {
        var wl = w.detach().requires_grad_(wGrad);
        var bl = b.detach().requires_grad_(bGrad);
        if (!ours)
        {
            // libtorch's backward (TorchSharp 0.107) aborts the process for a channels_last input that does
            // not require grad, so its x always does; weight's and bias's gradients do not depend on that.
            var xn = x.detach().requires_grad_();
            var yn = Oracle.Activate(torch.nn.functional.group_norm(xn, Groups, wl, bl, Eps), activation);
            var all = new[] { (wl, wGrad), (bl, bGrad) }.Where(p => p.Item2).Select(p => p.Item1).Prepend(xn).ToArray();
            var nativeGrads = torch.autograd.grad(new[] { yn }, all, new[] { dy }).ToList();
            return (xGrad ? nativeGrads : nativeGrads.Skip(1).ToList(), new List<long[]>());
        }
        var xl = x.detach().requires_grad_(xGrad);
        var inputs = new[] { (xl, xGrad), (wl, wGrad), (bl, bGrad) }.Where(p => p.Item2).Select(p => p.Item1).ToArray();
        using var forced = path.Force();
        var y = Functional.group_norm(xl, Groups, wl, bl, Eps, activation);
        var grads = torch.autograd.grad(new[] { y }, inputs, new[] { dy }).ToList();
        return (grads, ReturnedGradients.Held.Select(h => h.shape).ToList());
    }

    /// <summary>
    /// GroupNorm as a model's first layer: the input is data, not a parameter. backward() fills the
    /// module's weight and bias gradients as libtorch's module would, and computes no dx.
    /// </summary>
    [Test]
    public void FirstLayerModuleGetsItsParameterGradientsOnly([Values] KernelPath path, [Values(Layout.Contiguous, Layout.ChannelsLast)] Layout layout)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(32);
        var x = TestTensors.Input(Shape, layout, ScalarType.Float64, torch.CPU);
        var dy = torch.randn(Shape, ScalarType.Float64);
        using var ours = new GroupNorm(Groups, Shape[1], Eps, dtype: ScalarType.Float64, activation: Activation.SiLU);
        using var native = torch.nn.GroupNorm(Groups, Shape[1], Eps, dtype: ScalarType.Float64);
        using (torch.no_grad())
        {
            ours.weight!.copy_(torch.rand(Shape[1], ScalarType.Float64) + 0.5);
            ours.bias!.copy_(torch.randn(Shape[1], ScalarType.Float64));
            native.weight!.copy_(ours.weight);
            native.bias!.copy_(ours.bias);
        }

        int held;
        using (path.Force())
        {
            (ours.forward(x) * dy).sum().backward();
            held = ReturnedGradients.Held.Count;
        }
        // x requires grad on libtorch's side only: see Gradients.
        (torch.nn.functional.silu(native.forward(x.detach().requires_grad_())) * dy).sum().backward();

        Assert.Multiple(() =>
        {
            Assert.That(held, Is.EqualTo(2), "gradients backward computed (dweight and dbias only)");
            Assert.That(x.grad, Is.Null, "the input got a gradient");
            Assert.That(TestTensors.RelativeError(ours.weight!.grad!, native.weight!.grad!), Is.LessThanOrEqualTo(ParityCheck.Float64Tolerance), "weight.grad against libtorch's module");
            Assert.That(TestTensors.RelativeError(ours.bias!.grad!, native.bias!.grad!), Is.LessThanOrEqualTo(ParityCheck.Float64Tolerance), "bias.grad against libtorch's module");
        });
    }

    /// <summary>
    /// An undefined incoming gradient: y reaches the loss only through a function whose backward returns no
    /// gradient (as a custom Function may), so libtorch calls our backward with an undefined grad_output
    /// (materialize_grads is off). It must not fail (which would end the process) and must add nothing:
    /// weight's gradient is then only that of its other use, as with libtorch's group_norm.
    /// </summary>
    [Test]
    public void UndefinedIncomingGradientContributesNothing([Values] KernelPath path, [Values] Activation activation)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(33);
        var x = torch.randn(Shape, ScalarType.Float64);
        var w = torch.rand(Shape[1], ScalarType.Float64) + 0.5;
        var b = torch.randn(Shape[1], ScalarType.Float64);

        Tensor[] Run(Func<Tensor, Tensor, Tensor, Tensor> groupNorm)
        {
            var xl = x.detach().requires_grad_();
            var wl = w.detach().requires_grad_();
            var bl = b.detach().requires_grad_();
            var blocked = GradientBlocker.apply(groupNorm(xl, wl, bl));
            var loss = blocked.sum() + wl.square().sum() + bl.sum();
            var grads = torch.autograd.grad(new[] { loss }, new[] { xl, wl, bl }, allow_unused: true);
            return grads.Select((g, i) => g is null || g.IsInvalid ? torch.full(i == 0 ? Shape : new[] { Shape[1] }, double.NaN, ScalarType.Float64) : g).ToArray();
        }

        GradientBlocker.Calls = 0;
        Tensor[] ours;
        using (path.Force())
            ours = Run((xi, wi, bi) => Functional.group_norm(xi, Groups, wi, bi, Eps, activation));
        var native = Run((xi, wi, bi) => Oracle.Activate(torch.nn.functional.group_norm(xi, Groups, wi, bi, Eps), activation));

        Assert.Multiple(() =>
        {
            Assert.That(GradientBlocker.Calls, Is.EqualTo(2), "the blocking function's backward ran (so ours was reached only through it)");
            Assert.That(ours[0].isnan().all().item<bool>(), Is.True, "x got a gradient through an undefined one");
            Assert.That(native[0].isnan().all().item<bool>(), Is.True, "libtorch: x got a gradient through an undefined one");
            Assert.That(TestTensors.Identical(ours[1], 2 * w), Is.True, "weight's gradient is not exactly that of its other use (2w)");
            Assert.That(TestTensors.Identical(ours[2], torch.ones_like(b)), Is.True, "bias's gradient is not exactly that of its other use (1)");
            Assert.That(TestTensors.Identical(native[1], 2 * w), Is.True, "libtorch: weight's gradient");
        });
    }

    /// <summary>Passes its input through and returns no gradient for it: a defined output whose gradient is undefined.</summary>
    private sealed class GradientBlocker : autograd.SingleTensorFunction<GradientBlocker>
    {
        public static int Calls { get; set; }

        public override string Name => "GradientBlocker";

        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars) => ((Tensor)vars[0]).clone();

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad_output)
        {
            Calls++;
            return new List<Tensor> { null! };
        }
    }
}
