using System;
using System.Globalization;
using GroupNormalization.Conversion;
using TorchSharp;
using static TorchSharp.torch;

namespace ResNetCifar.Models;

/// <summary>Builds the network a run asks for.</summary>
internal static class ModelFactory
{
    public const string CifarResNetName = "resnet";
    public const string ResNet18Name = "resnet18";
    public const string ResNet18ConvertedName = "resnet18-converted";

    /// <summary>
    /// <c>resnet</c>: the CIFAR ResNet of the given depth. <c>resnet18</c>: torchvision's ResNet-18 built
    /// with the chosen norm through its norm_layer argument. <c>resnet18-converted</c>: torchvision's
    /// BatchNorm ResNet-18 run through <see cref="BatchNormConverter"/> (the norm choice must be gn).
    /// </summary>
    public static nn.Module<Tensor, Tensor> Create(string model, int depth, long inChannels, long numClasses, NormFactory norms, Action<string> log, ConvFactory? convs = null)
    {
        if (convs is { WeightStandardized: true } && model != CifarResNetName)
            throw new ArgumentException($"--weight-standardization is built into the CIFAR ResNet only; --model {model} keeps torchvision's convolutions.");
        switch (model)
        {
            case CifarResNetName:
                return new CifarResNet(depth, inChannels, numClasses, norms, convs);
            case ResNet18Name:
                var custom = torchvision.models.resnet18(num_classes: (int)numClasses, norm_layer: c => norms.Create(c));
                // torchvision's zero_init_residual only knows BatchNorm2d; zero each block's last norm ourselves.
                foreach (var (name, module) in custom.named_modules())
                {
                    if (name.EndsWith(".bn2", StringComparison.Ordinal) && module is nn.Module<Tensor, Tensor> norm) NormFactory.ZeroGamma(norm);
                }
                return WithInput(inChannels, custom);
            case ResNet18ConvertedName:
                if (norms.Kind != NormKind.Gn)
                    throw new ArgumentException("--model resnet18-converted converts BatchNorm to our GroupNorm; use it with --norm gn.");
                var net = torchvision.models.resnet18(num_classes: (int)numClasses, zero_init_residual: true);
                var report = BatchNormConverter.Convert(net, new BatchNormConversionOptions { num_groups = norms.GroupsFor(64) });
                log(string.Create(CultureInfo.InvariantCulture, $"BatchNormConverter replaced {report.Count} BatchNorm layers with GroupNorm."));
                return WithInput(inChannels, net);
            default:
                throw new ArgumentException($"Unknown --model '{model}'; use {CifarResNetName}, {ResNet18Name} or {ResNet18ConvertedName}.");
        }
    }

    private static nn.Module<Tensor, Tensor> WithInput(long inChannels, nn.Module<Tensor, Tensor> rgbNet) =>
        inChannels == 3 ? rgbNet : nn.Sequential(("rgb", new RepeatChannels()), ("net", rgbNet));
}
