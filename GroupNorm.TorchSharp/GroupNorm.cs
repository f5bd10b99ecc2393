using GroupNormalization.Autograd;
using GroupNormalization.Kernels;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace GroupNormalization;

/// <summary>
/// Group Normalization (Wu &amp; He, 2018) as a TorchSharp module: a drop-in replacement for
/// <c>torch.nn.GroupNorm</c> and for BatchNorm in small-batch training.
/// <para>
/// Channels are split into <see cref="num_groups"/> groups; each sample's groups are normalized with
/// their own mean and biased variance, then scaled and shifted per channel by <see cref="weight"/> and
/// <see cref="bias"/>. Accepts (N, C), (N, C, L), (N, C, H, W) and (N, C, D, H, W). Train and eval
/// behave the same: there are no running statistics.
/// </para>
/// <para>
/// State-dict keys are <c>weight</c> and <c>bias</c>, as in PyTorch and TorchSharp, so checkpoints move
/// between this module and theirs.
/// </para>
/// </summary>
public sealed class GroupNorm : torch.nn.Module<Tensor, Tensor>
{
    private Parameter? _weight;
    private Parameter? _bias;
    private double _eps;

    /// <summary>Creates the module; weight starts at 1 and bias at 0.</summary>
    /// <param name="num_groups">Number of groups to split the channels into; must divide num_channels.</param>
    /// <param name="num_channels">Number of channels C expected in the input.</param>
    /// <param name="eps">Added to the variance for numerical stability; must be ≥ 0.</param>
    /// <param name="affine">Whether to learn per-channel weight and bias.</param>
    /// <param name="device">Device for the parameters (default: TorchSharp's default device).</param>
    /// <param name="dtype">Floating dtype for the parameters (default: TorchSharp's default dtype).</param>
    /// <param name="activation">Activation fused after the normalization (default none): the module computes act(GroupNorm(x)).</param>
    /// <exception cref="System.ArgumentException">An argument is out of range; the message names it and its value.</exception>
    public GroupNorm(long num_groups, long num_channels, double eps = 1e-5, bool affine = true, Device? device = null, ScalarType? dtype = null,
        Activation activation = Activation.None)
        : base(nameof(GroupNorm))
    {
        GroupNormArguments.ValidateNumGroups(num_groups);
        GroupNormArguments.ValidateNumChannels(num_channels, num_groups);
        GroupNormArguments.ValidateEps(eps);
        GroupNormArguments.ValidateActivation(activation);
        if (dtype is ScalarType requested && !DTypeRules.IsSupported(requested))
            throw new System.ArgumentException($"dtype must be a floating-point type (Float16, BFloat16, Float32 or Float64), but got dtype={requested}.", nameof(dtype));

        this.num_groups = num_groups;
        this.num_channels = num_channels;
        _eps = eps;
        this.affine = affine;
        this.activation = activation;

        if (affine)
        {
            weight = new Parameter(torch.empty(num_channels, dtype, device));
            bias = new Parameter(torch.empty(num_channels, dtype, device));
            reset_parameters();
        }
        RegisterComponents();
    }

    /// <summary>Number of channel groups.</summary>
    public long num_groups { get; }

    /// <summary>Number of channels C the module expects.</summary>
    public long num_channels { get; }

    /// <summary>Whether the module has learnable per-channel weight and bias.</summary>
    public bool affine { get; }

    /// <summary>The activation applied to the normalized output in the same kernel (<see cref="Activation.None"/> for plain GroupNorm).</summary>
    public Activation activation { get; }

    /// <summary>Added to the variance for numerical stability; must be ≥ 0.</summary>
    public double eps
    {
        get => _eps;
        set
        {
            GroupNormArguments.ValidateEps(value);
            _eps = value;
        }
    }

    /// <summary>Per-channel scale γ of shape (C), or null when <see cref="affine"/> is false.</summary>
    public Parameter? weight
    {
        get => _weight;
        set => _weight = Replace(_weight, value, nameof(weight));
    }

    /// <summary>Per-channel shift β of shape (C), or null when <see cref="affine"/> is false.</summary>
    public Parameter? bias
    {
        get => _bias;
        set => _bias = Replace(_bias, value, nameof(bias));
    }

    /// <summary>Sets weight to 1 and bias to 0, as a freshly built module has them.</summary>
    public void reset_parameters()
    {
        using var _ = torch.no_grad();
        _weight?.fill_(1);
        _bias?.zero_();
    }

    /// <summary>Normalizes <paramref name="input"/> of shape (N, num_channels, *), then applies <see cref="activation"/>.</summary>
    /// <exception cref="System.ArgumentException">The input is malformed; the message names it and its value.</exception>
    public override Tensor forward(Tensor input) => forward(input, null);

    /// <summary>
    /// act(GroupNorm(<paramref name="input"/>) + <paramref name="residual"/>) in one pass: a ResNet block's
    /// norm → += shortcut → ReLU without the two extra passes (and, in training, without the activation-sized
    /// tensors they keep). <paramref name="residual"/> has the input's shape, dtype and device, any layout,
    /// and receives a gradient when it requires one. Null is the same as <see cref="forward(Tensor)"/>.
    /// </summary>
    /// <exception cref="System.ArgumentException">The input or the residual is malformed; the message names it and its value.</exception>
    public Tensor forward(Tensor input, Tensor? residual)
    {
        var shape = GroupNormArguments.Validate(input, num_groups, _weight, _bias, _eps, num_channels, residual: residual);
        return GroupNormFunction.Apply(input, _weight, _bias, residual, shape, _eps, activation);
    }

    /// <summary>
    /// PyTorch's repr, <c>GroupNorm(32, 256, eps=1e-05, affine=True)</c>, with <c>, activation=SiLU</c> appended
    /// when an activation is fused.
    /// </summary>
    public override string ToString() =>
        $"GroupNorm({num_groups}, {num_channels}, eps={PythonText.Repr(_eps)}, affine={(affine ? "True" : "False")}" +
        (activation == Activation.None ? ")" : $", activation={activation})");

    private Parameter? Replace(Parameter? current, Parameter? value, string name)
    {
        if (current is not null && value is not null && current.Handle == value.Handle) return current;
        current?.Dispose();
        // A module owns its parameters: they must not die with whatever dispose scope created them.
        value?.DetachFromDisposeScope();
        ConditionallyRegisterParameter(name, value);
        return value;
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _weight?.Dispose();
            _bias?.Dispose();
        }
        base.Dispose(disposing);
    }
}
