using System;
using System.Collections.Generic;
using GroupNormalization.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Autograd;

/// <summary>
/// GroupNorm as a TorchSharp autograd Function with a hand-written backward.
/// <para>
/// Forward runs the selected kernel and saves x and γ (β and the residual too when an activation needs
/// them to rebuild its input); the per-(n, g) μ and r travel in the context as a
/// managed float64 array on the fused CPU path, and as two more saved tensors on the device-generic one
/// (see <see cref="Statistics"/>). Backward computes only the gradients whose inputs require them, with the
/// same kernel family; when autograd is recording the backward (create_graph) it switches to
/// <see cref="DifferentiableBackward"/> so that second derivatives are right.
/// </para>
/// <para>
/// Arguments are validated by the public entry points before this runs: an exception inside backward
/// cannot be caught by the caller (libtorch terminates the process), so backward must not throw.
/// </para>
/// <para>
/// <see cref="torch.autograd.Function{T}"/> keeps one shared instance for all calls and threads, so this
/// class has no state: per-call values travel in the <see cref="autograd.AutogradContext"/>.
/// </para>
/// </summary>
internal sealed class GroupNormFunction : autograd.SingleTensorFunction<GroupNormFunction>
{
    private const string SettingsKey = "settings";

    /// <summary>Outputs of fewer elements keep TorchSharp's output cache until the graph goes (see <see cref="OutputCacheRelease"/>).</summary>
    private const long SmallestReleasedCache = 16 * 1024;

    /// <summary>What forward decided and backward needs, besides the saved tensors.</summary>
    private sealed class Settings
    {
        public Settings(GroupNormShape shape, double eps, Activation activation, IGroupNormKernel kernel, GradientRequest need, bool hasResidual)
        {
            HasResidual = hasResidual;
            Shape = shape;
            Eps = eps;
            Activation = activation;
            Kernel = kernel;
            Need = need;
        }

        public GroupNormShape Shape { get; }

        public double Eps { get; }

        public Activation Activation { get; }

        public IGroupNormKernel Kernel { get; }

        public GradientRequest Need { get; }

        /// <summary>Set by forward: the fused path's statistics (the generic path's are saved tensors).</summary>
        public double[]? HostStatistics { get; set; }

        /// <summary>Set by forward: the dtype of γ's and β's gradients (β itself is not saved without an activation).</summary>
        public ScalarType ParameterType { get; set; }

        /// <summary>Whether a residual is added (saved only with an activation).</summary>
        public bool HasResidual { get; }
    }

    // TorchSharp wraps forward's outputs in new handles and saves tensors after forward returns, so the
    // handles forward made must outlive it; they are released as soon as apply returns, together with
    // TorchSharp's spare output cache (see OutputCacheRelease).
    [ThreadStatic]
    private static List<Tensor>? t_releaseAfterApply;

    [ThreadStatic]
    private static List<autograd.AutogradContext>? t_contextsAfterApply;

    public override string Name => "GroupNormBackward";

    /// <summary>Runs GroupNorm on validated arguments, recording a graph node only when a gradient can flow.</summary>
    public static Tensor Apply(Tensor input, Tensor? weight, Tensor? bias, Tensor? residual, GroupNormShape shape, double eps, Activation activation)
    {
        ReturnedGradients.ReleasePrevious();
        var kernel = KernelSelector.Select(input);
        var need = new GradientRequest(input.requires_grad, weight?.requires_grad ?? false, bias?.requires_grad ?? false,
            residual?.requires_grad ?? false);

        if (!need.Any || !torch.is_grad_enabled())
        {
            // Inference: no graph, so skip the node and its bookkeeping entirely.
            KernelOverride.Current?.Record(ForwardRoute.Inference);
            return kernel.Forward(input, Epilogue.Of(input, weight, bias, residual, activation), shape, eps, keepStatistics: false, out _);
        }

        var release = t_releaseAfterApply ??= new List<Tensor>(4);
        var contexts = t_contextsAfterApply ??= new List<autograd.AutogradContext>(1);
        int mark = release.Count, contextMark = contexts.Count;
        KernelOverride.Current?.Record(ForwardRoute.Graph);
        try
        {
            return apply(input, weight, bias, residual, new Settings(shape, eps, activation, kernel, need, residual is not null));
        }
        finally
        {
            for (int i = release.Count - 1; i >= mark; i--) release[i].Dispose();
            release.RemoveRange(mark, release.Count - mark);
            for (int i = contexts.Count - 1; i >= contextMark; i--) OutputCacheRelease.Release(contexts[i]);
            contexts.RemoveRange(contextMark, contexts.Count - contextMark);
        }
    }

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var x = (Tensor)vars[0];
        var weight = vars[1] as Tensor;
        var bias = vars[2] as Tensor;
        var residual = vars[3] as Tensor;
        var settings = (Settings)vars[4];

        var epilogue = Epilogue.Of(x, weight, bias, residual, settings.Activation);
        settings.ParameterType = epilogue.ParameterType;
        var y = settings.Kernel.Forward(x, epilogue, settings.Shape, settings.Eps, keepStatistics: true, out var statistics);
        settings.HostStatistics = statistics.Host;
        // x, γ; β and the residual only when an activation makes backward rebuild its input; the generic
        // path's μ and r last.
        var saved = new List<Tensor>(6) { x, weight! };
        if (settings.Activation != Activation.None)
        {
            saved.Add(bias!);
            if (residual is not null) saved.Add(residual);
        }
        if (statistics.Host is null)
        {
            saved.Add(statistics.Mean!);
            saved.Add(statistics.Rstd!);
        }
        ctx.save_for_backward(saved);
        ctx.save_data(SettingsKey, settings);
        // An undefined incoming gradient reaches backward as an invalid tensor instead of a zero tensor
        // built from TorchSharp's output cache, which OutputCacheRelease frees.
        ctx.set_materialize_grads(false);
        // Small caches are left to TorchSharp, which frees them with the graph: releasing costs more than
        // the few KiB it would save.
        if (settings.Shape.Numel >= SmallestReleasedCache) t_contextsAfterApply!.Add(ctx);

        var release = t_releaseAfterApply!;
        release.Add(y);
        if (statistics.Mean is not null) release.Add(statistics.Mean);
        if (statistics.Rstd is not null) release.Add(statistics.Rstd);
        return y;
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad_output)
    {
        try
        {
            return Backward(ctx, grad_output);
        }
        catch (Exception e)
        {
            // Unreachable for validated input; if it happens, say what failed before the process ends,
            // instead of letting libtorch terminate it with no context.
            Environment.FailFast($"GroupNorm.TorchSharp: backward failed: {e.Message}", e);
            throw;
        }
    }

    private static List<Tensor> Backward(autograd.AutogradContext ctx, Tensor gradOutput)
    {
        ReturnedGradients.ReleasePrevious();
        var settings = (Settings)ctx.get_data(SettingsKey);
        var need = settings.Need;
        if (gradOutput.IsInvalid)
        {
            // No gradient reached y (materialize_grads is off): contribute none to the inputs.
            return new List<Tensor> { null!, null!, null!, null!, null! };
        }

        Tensor? dx, dweight, dbias, dresidual;
        using (var scope = torch.NewDisposeScope())
        {
            var saved = ctx.get_saved_variables();
            Tensor x = saved[0];
            Tensor? weight = saved[1];
            int next = 2;
            bool activated = settings.Activation != Activation.None;
            Tensor? bias = activated ? saved[next++] : null;
            Tensor? residual = activated && settings.HasResidual ? saved[next++] : null;
            var statistics = settings.HostStatistics is { } host
                ? new Statistics(host, null, null)
                : new Statistics(null, saved[next], saved[next + 1]);
            var epilogue = new Epilogue(weight, bias, residual, settings.Activation, settings.ParameterType);
            // Without an activation y = z + r, so r's gradient is dy itself: a new handle on it, nothing computed.
            var kernelNeed = need with { Residual = need.Residual && activated };

            bool recorded = torch.is_grad_enabled();
            KernelOverride.Current?.Record(recorded ? BackwardRoute.Recorded : BackwardRoute.Kernel);
            (dx, dweight, dbias, dresidual) = recorded
                ? DifferentiableBackward.Compute(gradOutput, x, epilogue, statistics, settings.Shape, settings.Eps, kernelNeed)
                : settings.Kernel.Backward(gradOutput, x, statistics, epilogue, settings.Shape, kernelNeed);
            if (need.Residual && !activated) dresidual = gradOutput.alias();

            // Out of this scope, released at the next call (see ReturnedGradients); everything else made here goes now.
            ReturnedGradients.Hold(dx);
            ReturnedGradients.Hold(dweight);
            ReturnedGradients.Hold(dbias);
            ReturnedGradients.Hold(dresidual);
        }
        gradOutput.Dispose();

        // One entry per forward argument: x, weight, bias, residual, settings. Absent gradients are null.
        return new List<Tensor> { dx!, dweight!, dbias!, dresidual!, null! };
    }
}

/// <summary>How a forward call ran (see <see cref="KernelOverride.LastForward"/>).</summary>
internal enum ForwardRoute
{
    None,

    /// <summary>No gradient can flow: the kernel alone, no graph node.</summary>
    Inference,

    /// <summary>Through the autograd Function, saving what backward needs.</summary>
    Graph,
}

/// <summary>How a backward call ran (see <see cref="KernelOverride.LastBackward"/>).</summary>
internal enum BackwardRoute
{
    None,

    /// <summary>The forward's kernel family, on its saved statistics.</summary>
    Kernel,

    /// <summary>create_graph: <see cref="DifferentiableBackward"/>'s recorded tensor formulas.</summary>
    Recorded,
}
