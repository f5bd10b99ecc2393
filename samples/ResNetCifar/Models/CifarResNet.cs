using System;
using TorchSharp;
using static TorchSharp.torch;

namespace ResNetCifar.Models;

/// <summary>
/// He et al.'s CIFAR ResNet: a 3×3 stem without max-pooling, three stages of n basic blocks with
/// 16, 32 and 64 channels (the last two halve the resolution), global average pooling and a linear
/// classifier. Depth is 6n + 2: 20, 32, 44, 56, 110…
/// </summary>
internal sealed class CifarResNet : nn.Module<Tensor, Tensor>
{
    private readonly nn.Module<Tensor, Tensor> stem;
    private readonly nn.Module<Tensor, Tensor> stemNorm;
    private readonly nn.Module<Tensor, Tensor> stages;
    private readonly nn.Module<Tensor, Tensor> classifier;

    public CifarResNet(int depth, long inChannels, long numClasses, NormFactory norms, ConvFactory? convs = null) : base(nameof(CifarResNet))
    {
        if (depth < 8 || (depth - 2) % 6 != 0)
            throw new ArgumentException($"--depth must be 6n + 2 with n ≥ 1 (20, 32, 44, 56, 110…), but got {depth}.", nameof(depth));
        var blocksPerStage = (depth - 2) / 6;

        convs ??= new ConvFactory();
        stem = convs.Create(inChannels, 16, 3, padding: 1);
        stemNorm = norms.Create(16, then: GroupNormalization.Activation.ReLU);
        var blocks = nn.Sequential();
        long channels = 16;
        foreach (var (width, stride) in new[] { (16L, 1L), (32L, 2L), (64L, 2L) })
        {
            for (var i = 0; i < blocksPerStage; i++)
            {
                blocks.append(new BasicBlock(channels, width, i == 0 ? stride : 1, norms, convs));
                channels = width;
            }
        }
        stages = blocks;
        classifier = nn.Linear(64, numClasses);

        RegisterComponents();
        foreach (var module in modules())
        {
            // Convolution: TorchSharp's Conv2d and our weight-standardized one alike.
            if (module is TorchSharp.Modules.Convolution conv)
                nn.init.kaiming_normal_(conv.weight, mode: nn.init.FanInOut.FanOut, nonlinearity: nn.init.NonlinearityType.ReLU);
        }
    }

    public override Tensor forward(Tensor input)
    {
        using var scope = torch.NewDisposeScope();
        var x = stemNorm.call(stem.call(input));
        if (NormFactory.Fused(stemNorm, GroupNormalization.Activation.ReLU) is null) x = x.relu_();
        x = stages.call(x);
        x = x.mean(new long[] { 2, 3 });
        return classifier.call(x).MoveToOuterDisposeScope();
    }
}
