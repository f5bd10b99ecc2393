namespace ResNetCifar.Models;

/// <summary>Which normalization layer the network uses.</summary>
internal enum NormKind
{
    /// <summary>GroupNorm.TorchSharp's module.</summary>
    Gn,

    /// <summary>TorchSharp's BatchNorm2d.</summary>
    Bn,

    /// <summary>TorchSharp's built-in nn.GroupNorm, for comparison.</summary>
    GnBuiltin,
}
