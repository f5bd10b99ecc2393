using System;
using System.Globalization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ResNetCifar.Models;

/// <summary>
/// BatchNorm2d whose training-mode statistics come from slices of <see cref="SliceSize"/> images, as on
/// W devices that each see b images and keep their own BatchNorm (data parallelism without SyncBatchNorm).
/// Every slice of a batch of W·b images is normalized with its own mean and biased variance in one
/// vectorised call, so a step costs about the same whatever b is: only the statistics change. Eval mode uses the running statistics, like BatchNorm2d; state-dict keys are BatchNorm2d's.
/// </summary>
internal sealed class GhostBatchNorm2d : nn.Module<Tensor, Tensor>
{
    private readonly Parameter weight;
    private readonly Parameter bias;
    private readonly Tensor running_mean;
    private readonly Tensor running_var;
    private readonly double _eps;
    private readonly double _momentum;

    // Precise BN: population sums of the input, kept in float64 while recalibrating.
    private Tensor? _sum;
    private Tensor? _sumOfSquares;
    private long _count;

    public GhostBatchNorm2d(long channels, int sliceSize, double eps = 1e-5, double momentum = 0.1) : base(nameof(GhostBatchNorm2d))
    {
        if (sliceSize < 1) throw new ArgumentOutOfRangeException(nameof(sliceSize), sliceSize, "the slice must hold at least one image");
        SliceSize = sliceSize;
        _eps = eps;
        _momentum = momentum;
        weight = new Parameter(torch.ones(channels));
        bias = new Parameter(torch.zeros(channels));
        running_mean = torch.zeros(channels);
        running_var = torch.ones(channels);
        RegisterComponents();
    }

    /// <summary>Images per statistics slice (b): the batch each emulated device normalizes on its own.</summary>
    public int SliceSize { get; }

    public Parameter Weight => weight;

    public Tensor RunningMean => running_mean;

    public Tensor RunningVar => running_var;

    /// <summary>Whether a training-mode forward is collecting population statistics (see <see cref="BeginRecalibration"/>).</summary>
    public bool Recalibrating => _sum is not null;

    public override Tensor forward(Tensor input)
    {
        if (!training)
            return nn.functional.batch_norm(input, running_mean, running_var, weight, bias, training: false, momentum: _momentum, eps: _eps);

        using var scope = torch.NewDisposeScope();
        long n = input.shape[0], c = input.shape[1], h = input.shape[2], w = input.shape[3];
        // While recalibrating, the whole batch is one slice: downstream layers see inputs normalized as
        // in training, and this layer's population sums are what it keeps.
        long slice = Recalibrating ? n : Math.Min(SliceSize, n);
        if (n % slice != 0)
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"a batch of {n} images does not split into slices of {slice}"), nameof(input));
        var k = n / slice;
        // libtorch's fused batch_norm does the work: slice j's channels become channels j·C … j·C + C − 1 of a
        // (b, k·C, H, W) tensor, so each (slice, channel) pair gets its own statistics. The two transposing
        // copies cost less than a reduction over non-adjacent dimensions and its autograd graph. Running
        // statistics of size k·C with momentum 1 receive each slice's own estimate (unbiased variance).
        var stacked = k == 1 ? input : input.reshape(k, slice, c, h, w).transpose(0, 1).reshape(slice, k * c, h, w);
        var sliceMean = torch.zeros(k * c, input.dtype, input.device);
        var sliceVar = torch.ones(k * c, input.dtype, input.device);
        var normalized = nn.functional.batch_norm(stacked, sliceMean, sliceVar, weight.repeat(k), bias.repeat(k), training: true, momentum: 1.0, eps: _eps);
        var output = k == 1 ? normalized : normalized.reshape(slice, k, c, h, w).transpose(0, 1).reshape(n, c, h, w);

        using (torch.no_grad())
        {
            if (Recalibrating)
            {
                var x = input.detach().to(ScalarType.Float64);
                _sum!.add_(x.sum(new long[] { 0, 2, 3 }));
                _sumOfSquares!.add_(x.square().sum(new long[] { 0, 2, 3 }));
                _count += n * h * w;
            }
            else
            {
                // Each slice's estimate, averaged: what k devices' running statistics would average to.
                running_mean.mul_(1 - _momentum).add_(sliceMean.view(k, c).mean(new long[] { 0 }), alpha: _momentum);
                running_var.mul_(1 - _momentum).add_(sliceVar.view(k, c).mean(new long[] { 0 }), alpha: _momentum);
            }
        }
        return output.MoveToOuterDisposeScope();
    }

    /// <summary>Starts precise BN: training-mode forwards now sum this layer's inputs instead of updating the running statistics.</summary>
    public void BeginRecalibration()
    {
        _sum = torch.zeros(running_mean.shape[0], ScalarType.Float64).DetachFromDisposeScope();
        _sumOfSquares = torch.zeros(running_mean.shape[0], ScalarType.Float64).DetachFromDisposeScope();
        _count = 0;
    }

    /// <summary>Replaces the running statistics with the population mean and unbiased variance of what was seen since <see cref="BeginRecalibration"/>.</summary>
    public void EndRecalibration()
    {
        if (_sum is null || _sumOfSquares is null) throw new InvalidOperationException("EndRecalibration without BeginRecalibration.");
        using (torch.no_grad())
        {
            if (_count > 1)
            {
                var mean = _sum / _count;
                var variance = (_sumOfSquares / _count - mean.square()) * ((double)_count / (_count - 1));
                running_mean.copy_(mean);
                running_var.copy_(variance.clamp_min(0));
            }
        }
        _sum.Dispose();
        _sumOfSquares.Dispose();
        _sum = _sumOfSquares = null;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _sum?.Dispose();
            _sumOfSquares?.Dispose();
        }
        base.Dispose(disposing);
    }
}
