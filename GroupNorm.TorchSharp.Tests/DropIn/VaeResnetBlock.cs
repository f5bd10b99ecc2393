// snippet: torchsharp-names
using GroupNormalization;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MyModels;

// A Stable Diffusion VAE ResnetBlock as TorchSharp ports write it, moved to our GroupNorm. The file keeps
// TorchSharp.Modules (for Conv2d) next to GroupNormalization, and no alias is needed.
public sealed class VaeResnetBlock : nn.Module<Tensor, Tensor>
{
    private readonly nn.Module<Tensor, Tensor> norm1, norm2;   // was: GroupNorm norm1, norm2;
    private readonly Conv2d conv1, conv2;

    public VaeResnetBlock(long channels) : base(nameof(VaeResnetBlock))
    {
        // was: nn.GroupNorm(32, channels, eps: 1e-6), followed by a SiLU call in forward
        norm1 = gn.GroupNorm(32, channels, eps: 1e-6, activation: Activation.SiLU);
        conv1 = nn.Conv2d(channels, channels, 3, padding: 1);
        norm2 = gn.GroupNorm(32, channels, eps: 1e-6, activation: Activation.SiLU);
        conv2 = nn.Conv2d(channels, channels, 3, padding: 1);
        RegisterComponents();
    }

    // was: x + conv2.call(silu(norm2.call(conv1.call(silu(norm1.call(x))))))
    // The SiLU calls go: norm1 and norm2 apply it. Keeping them would apply SiLU twice.
    public override Tensor forward(Tensor x) => x + conv2.call(norm2.call(conv1.call(norm1.call(x))));
}
// end snippet
