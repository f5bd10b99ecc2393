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

    /// <summary>
    /// No normalization (an identity in each norm's place): not a network to train, but the throughput
    /// comparison's bound on what any GroupNorm could gain.
    /// </summary>
    None,
}
