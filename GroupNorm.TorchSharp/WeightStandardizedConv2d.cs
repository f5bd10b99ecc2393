using System;
using System.Text;
using GroupNormalization.Kernels;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace GroupNormalization;

/// <summary>
/// A 2-D convolution with Weight Standardization (Qiao et al., 2019), the companion of GroupNorm in
/// Big Transfer's ResNets: before every convolution each output filter W_o of the weight (out_channels,
/// in_channels / groups, kH, kW) is replaced by Ŵ_o = (W_o − mean(W_o)) / sqrt(var(W_o) + eps), with the
/// biased variance over the filter's in_channels / groups · kH · kW elements; then
/// y = conv2d(x, Ŵ, bias, stride, padding, dilation, groups).
/// <para>
/// It derives from TorchSharp's <see cref="Convolution"/>, the base of <c>nn.Conv2d</c>: the parameters are
/// the same <c>weight</c> and <c>bias</c>, initialised as PyTorch initialises Conv2d, under the same
/// state-dict keys, so a checkpoint moves between this module and <c>nn.Conv2d</c> in both directions (the
/// stored weight is the raw W; standardization happens in <see cref="forward"/>). Gradients reach W through
/// the standardization.
/// </para>
/// </summary>
public sealed class WeightStandardizedConv2d : Convolution
{
    private static readonly long[] s_noPadding = { 0, 0 };
    private double _eps;

    /// <summary>Creates the module with a square kernel and the same stride, padding and dilation in both dimensions.</summary>
    /// <param name="in_channels">Channels C of the input.</param>
    /// <param name="out_channels">Channels of the output (the number of filters).</param>
    /// <param name="kernel_size">Height and width of the kernel.</param>
    /// <param name="stride">Stride of the convolution.</param>
    /// <param name="padding">Padding added to both sides of each spatial dimension.</param>
    /// <param name="dilation">Spacing between kernel elements.</param>
    /// <param name="padding_mode">How the padding is filled: zeros (default), reflect, replicate, circular or constant (zeros).</param>
    /// <param name="groups">Blocked connections from input to output channels; must divide both channel counts.</param>
    /// <param name="bias">Whether to learn a bias of shape (out_channels).</param>
    /// <param name="device">Device for the parameters (default: TorchSharp's default device).</param>
    /// <param name="dtype">Floating dtype for the parameters (default: TorchSharp's default dtype).</param>
    /// <param name="eps">Added to each filter's variance inside the square root; must be ≥ 0.</param>
    /// <exception cref="ArgumentException">An argument is out of range; the message names it and its value.</exception>
    public WeightStandardizedConv2d(long in_channels, long out_channels, long kernel_size, long stride = 1, long padding = 0, long dilation = 1,
        PaddingModes padding_mode = PaddingModes.Zeros, long groups = 1, bool bias = true, Device? device = null, ScalarType? dtype = null,
        double eps = 1e-5)
        : this(in_channels, out_channels, (kernel_size, kernel_size), (stride, stride), (padding, padding), (dilation, dilation),
            padding_mode, groups, bias, device, dtype, eps)
    {
    }

    /// <summary>Creates the module with a (height, width) kernel, stride, padding and dilation.</summary>
    /// <param name="in_channels">Channels C of the input.</param>
    /// <param name="out_channels">Channels of the output (the number of filters).</param>
    /// <param name="kernel_size">(height, width) of the kernel.</param>
    /// <param name="stride">(height, width) stride; default (1, 1).</param>
    /// <param name="padding">(height, width) padding added to both sides; default (0, 0).</param>
    /// <param name="dilation">(height, width) spacing between kernel elements; default (1, 1).</param>
    /// <param name="padding_mode">How the padding is filled: zeros (default), reflect, replicate, circular or constant (zeros).</param>
    /// <param name="groups">Blocked connections from input to output channels; must divide both channel counts.</param>
    /// <param name="bias">Whether to learn a bias of shape (out_channels).</param>
    /// <param name="device">Device for the parameters (default: TorchSharp's default device).</param>
    /// <param name="dtype">Floating dtype for the parameters (default: TorchSharp's default dtype).</param>
    /// <param name="eps">Added to each filter's variance inside the square root; must be ≥ 0.</param>
    /// <exception cref="ArgumentException">An argument is out of range; the message names it and its value.</exception>
    public WeightStandardizedConv2d(long in_channels, long out_channels, (long, long) kernel_size, (long, long)? stride = null,
        (long, long)? padding = null, (long, long)? dilation = null, PaddingModes padding_mode = PaddingModes.Zeros, long groups = 1,
        bool bias = true, Device? device = null, ScalarType? dtype = null, double eps = 1e-5)
        // The base constructor allocates and initialises the parameters, so the arguments are checked in its
        // first argument, before libtorch sees a negative size or a zero group count.
        : base(ValidatedName(in_channels, out_channels, kernel_size, stride ?? (1, 1), padding ?? (0, 0), dilation ?? (1, 1), padding_mode, groups, dtype, eps),
            in_channels, out_channels, Pair(kernel_size), Pair(stride ?? (1, 1)), Pair(padding ?? (0, 0)), padding_type: null,
            Pair(dilation ?? (1, 1)), transposed: false, output_padding: new long[] { 0, 0 }, groups, bias, padding_mode, device, dtype)
    {
        _eps = eps;
    }

    /// <summary>Added to each filter's variance inside the square root; must be ≥ 0 and not NaN.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is negative or NaN.</exception>
    public double eps
    {
        get => _eps;
        set
        {
            GroupNormArguments.ValidateEps(value);
            _eps = value;
        }
    }

    /// <summary>
    /// Standardizes each output filter of a convolution weight: Ŵ_o = (W_o − mean(W_o)) / sqrt(var(W_o) + eps),
    /// with the biased variance over every dimension but the first. Differentiable, so gradients flow back to
    /// <paramref name="weight"/>; combine it with <c>functional.conv2d</c> when you hold the weight yourself.
    /// </summary>
    /// <param name="weight">A weight of shape (out_channels, in_channels / groups, *kernel): any rank ≥ 2, so Conv1d and Conv3d weights work too.</param>
    /// <param name="eps">Added to the variance inside the square root; must be ≥ 0 (with 0, a constant filter gives NaN).</param>
    /// <returns>Ŵ, of <paramref name="weight"/>'s shape, dtype and device.</returns>
    /// <exception cref="ArgumentException">The weight is null, disposed, sparse, not floating-point, of rank &lt; 2 or has empty filters, or eps is negative or NaN.</exception>
    public static Tensor standardize_weight(Tensor weight, double eps = 1e-5)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (weight.IsInvalid)
            throw new ArgumentException("weight has been disposed; its native tensor no longer exists.", nameof(weight));
        GroupNormArguments.ValidateEps(eps);
        if (weight.is_sparse)
            throw new ArgumentException("standardize_weight expects a dense (strided) weight, but got a sparse tensor.", nameof(weight));
        var dtype = weight.dtype;
        if (!DTypeRules.IsSupported(dtype))
            throw new ArgumentException($"standardize_weight expects a floating-point weight (Float16, BFloat16, Float32 or Float64), but got weight of dtype {dtype}.", nameof(weight));
        int rank = (int)weight.ndim;
        if (rank < 2)
            throw new ArgumentException($"standardize_weight expects a weight of rank 2 or more (out_channels, in_channels / groups, *kernel), but got weight of shape {PythonText.Shape(weight.shape)}.", nameof(weight));

        var dims = new long[rank - 1];
        long filterSize = 1;
        for (int i = 1; i < rank; i++)
        {
            dims[i - 1] = i;
            filterSize *= weight.size(i);
        }
        // An empty filter has no mean; libtorch would answer with NaN, not an error.
        if (filterSize == 0)
            throw new ArgumentException($"standardize_weight expects filters with at least one element, but got weight of shape {PythonText.Shape(weight.shape)}.", nameof(weight));

        using var scope = torch.NewDisposeScope();
        // Half types keep too few digits for a variance (bfloat16 has 8 bits of mantissa): the statistics and
        // the division run in float32, as GroupNorm's do, and the result is rounded once.
        var arithmetic = DTypeRules.Arithmetic(dtype);
        var w = dtype == arithmetic ? weight : weight.to(arithmetic);
        var (variance, mean) = w.var_mean(dims, unbiased: false, keepdim: true);
        var standardized = (w - mean) / (variance + eps).sqrt();
        if (arithmetic != dtype) standardized = standardized.to(dtype);
        return standardized.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Convolves <paramref name="input"/> of shape (N, in_channels, H, W), or unbatched (in_channels, H, W), with
    /// the standardized weight.
    /// </summary>
    /// <exception cref="ArgumentException">The input is malformed or does not fit the module; the message names it and its value.</exception>
    /// <exception cref="InvalidOperationException">The module's weight, bias, groups, kernel_size, stride, dilation or padding were changed after construction into something that is no longer a valid convolution.</exception>
    public override Tensor forward(Tensor input)
    {
        ValidateInput(input);
        using var scope = torch.NewDisposeScope();
        var w = standardize_weight(weight, _eps);
        Tensor y;
        // The same three routes as TorchSharp's Conv2d.forward, so that padding modes and padding types
        // behave as they do there.
        if (padding_mode != PaddingModes.Zeros)
        {
            var padded = torch.nn.functional.pad(input, _reversed_padding_repeated_twice, padding_mode);
            y = torch.nn.functional.conv2d(padded, w, bias, stride, s_noPadding, dilation, groups);
        }
        else if (padding_type is Padding type)
        {
            y = torch.nn.functional.conv2d_padding(input, w, bias, stride, type, dilation, groups);
        }
        else
        {
            y = torch.nn.functional.conv2d(input, w, bias, stride, padding, dilation, groups);
        }
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// PyTorch's Conv2d repr with the eps appended:
    /// <c>WeightStandardizedConv2d(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False, eps=1e-05)</c>.
    /// </summary>
    public override string ToString()
    {
        var text = new StringBuilder();
        text.Append(nameof(WeightStandardizedConv2d)).Append('(').Append(in_channels).Append(", ").Append(out_channels)
            .Append(", kernel_size=").Append(PythonTuple(kernel_size)).Append(", stride=").Append(PythonTuple(stride));
        // PyTorch prints a string padding ('same', 'valid') always and a numeric one only when it is not zero.
        if (padding_type is Padding type)
            text.Append(", padding=").Append(type == Padding.Same ? "same" : "valid");
        else if (padding is long[] p && Array.Exists(p, v => v != 0))
            text.Append(", padding=").Append(PythonTuple(p));
        if (Array.Exists(dilation, v => v != 1))
            text.Append(", dilation=").Append(PythonTuple(dilation));
        if (groups != 1)
            text.Append(", groups=").Append(groups);
        if (bias is null)
            text.Append(", bias=False");
        if (padding_mode != PaddingModes.Zeros)
            text.Append(", padding_mode=").Append(padding_mode.ToString().ToLowerInvariant());
        return text.Append(", eps=").Append(PythonText.Repr(_eps)).Append(')').ToString();
    }

    private static long[] Pair((long, long) value) => new[] { value.Item1, value.Item2 };

    private static string PythonTuple(long[] values) => "(" + string.Join(", ", values) + (values.Length == 1 ? ",)" : ")");

    private static string ValidatedName(long in_channels, long out_channels, (long, long) kernel_size, (long, long) stride, (long, long) padding,
        (long, long) dilation, PaddingModes padding_mode, long groups, ScalarType? dtype, double eps)
    {
        if (in_channels <= 0)
            throw new ArgumentOutOfRangeException(nameof(in_channels), in_channels, $"in_channels must be positive, but got in_channels={in_channels}.");
        if (out_channels <= 0)
            throw new ArgumentOutOfRangeException(nameof(out_channels), out_channels, $"out_channels must be positive, but got out_channels={out_channels}.");
        if (kernel_size.Item1 <= 0 || kernel_size.Item2 <= 0)
            throw new ArgumentOutOfRangeException(nameof(kernel_size), kernel_size, $"kernel_size must be positive, but got kernel_size={kernel_size}.");
        if (stride.Item1 <= 0 || stride.Item2 <= 0)
            throw new ArgumentOutOfRangeException(nameof(stride), stride, $"stride must be positive, but got stride={stride}.");
        if (padding.Item1 < 0 || padding.Item2 < 0)
            throw new ArgumentOutOfRangeException(nameof(padding), padding, $"padding must be non-negative, but got padding={padding}.");
        if (dilation.Item1 <= 0 || dilation.Item2 <= 0)
            throw new ArgumentOutOfRangeException(nameof(dilation), dilation, $"dilation must be positive, but got dilation={dilation}.");
        if (!Enum.IsDefined(padding_mode))
            throw new ArgumentOutOfRangeException(nameof(padding_mode), padding_mode, $"padding_mode must be one of Zeros, Reflect, Replicate, Circular or Constant, but got padding_mode={(int)padding_mode}.");
        if (groups <= 0)
            throw new ArgumentOutOfRangeException(nameof(groups), groups, $"groups must be positive, but got groups={groups}.");
        if (in_channels % groups != 0)
            throw new ArgumentException($"in_channels must be divisible by groups, but got in_channels={in_channels} and groups={groups}.", nameof(in_channels));
        if (out_channels % groups != 0)
            throw new ArgumentException($"out_channels must be divisible by groups, but got out_channels={out_channels} and groups={groups}.", nameof(out_channels));
        if (dtype is ScalarType requested && !DTypeRules.IsSupported(requested))
            throw new ArgumentException($"dtype must be a floating-point type (Float16, BFloat16, Float32 or Float64), but got dtype={requested}.", nameof(dtype));
        GroupNormArguments.ValidateEps(eps);
        return nameof(WeightStandardizedConv2d);
    }

    /// <summary>
    /// Everything libtorch would otherwise reject with a native error, checked here so the caller gets a .NET
    /// exception: <see cref="ArgumentException"/> naming <c>input</c> for the input, and
    /// <see cref="InvalidOperationException"/> for the module's own state, which the base class lets users change
    /// after construction (weight, bias, groups, kernel_size, stride, dilation, padding).
    /// </summary>
    private void ValidateInput(Tensor input)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (input.IsInvalid)
            throw new ArgumentException("input has been disposed; its native tensor no longer exists.", nameof(input));
        if (input.is_sparse)
            throw new ArgumentException("WeightStandardizedConv2d expects a dense (strided) input, but got a sparse tensor.", nameof(input));

        int rank = (int)input.ndim;
        if (rank is not (3 or 4))
            throw new ArgumentException($"Expected 3D (unbatched) or 4D (batched) input to WeightStandardizedConv2d, but got input of shape {PythonText.Shape(input.shape)}.", nameof(input));
        long channels = input.size(rank - 3);
        if (channels != in_channels)
            throw new ArgumentException($"Expected input with {in_channels} channels (dimension {rank - 3}), but got input of shape {PythonText.Shape(input.shape)}.", nameof(input));
        if (!DTypeRules.IsSupported(input.dtype))
            throw new ArgumentException($"WeightStandardizedConv2d expects a floating-point input (Float16, BFloat16, Float32 or Float64), but got input of dtype {input.dtype}.", nameof(input));

        var w = ValidateState();
        if (input.dtype != w.dtype)
            throw new ArgumentException($"Expected input to have the weight's dtype ({w.dtype}), but got input of dtype {input.dtype}. Convert the module with .to({input.dtype}) or the input with .to({w.dtype}).", nameof(input));
        if (!SameDevice(input, w))
            throw new ArgumentException($"Expected input to be on the module's device ({w.device}), but got input on {input.device}.", nameof(input));

        for (int d = 0; d < 2; d++)
        {
            string axis = d == 0 ? "height" : "width";
            long size = input.size(rank - 2 + d);
            if (size == 0)
                throw new ArgumentException($"Expected input with non-empty spatial dimensions, but got input of shape {PythonText.Shape(input.shape)}.", nameof(input));

            // What is added before and after this dimension: the module's padding, or for a padding type
            // with a non-zero mode, what F.pad will add. On the zeros route libtorch computes 'same' and
            // 'valid' itself, and 'same' always pads enough.
            long before, after;
            if (padding is not null)
            {
                before = after = padding[d];
            }
            else if (padding_mode != PaddingModes.Zeros)
            {
                // F.pad's list runs from the last dimension: width first.
                before = _reversed_padding_repeated_twice[2 * (1 - d)];
                after = _reversed_padding_repeated_twice[2 * (1 - d) + 1];
            }
            else
            {
                before = after = 0;
                if (padding_type == Padding.Same) continue;
            }

            long extent = dilation[d] * (kernel_size[d] - 1) + 1;
            if (size + before + after < extent)
                throw new ArgumentException($"Expected input whose padded {axis} ({size} + {before} + {after}) is at least the dilated kernel's ({extent}), but got input of shape {PythonText.Shape(input.shape)}.", nameof(input));
            if (padding_mode == PaddingModes.Reflect && Math.Max(before, after) >= size)
                throw new ArgumentException($"Reflect padding of {Math.Max(before, after)} needs an input {axis} above it, but got input of shape {PythonText.Shape(input.shape)}.", nameof(input));
            if (padding_mode == PaddingModes.Circular && Math.Max(before, after) > size)
                throw new ArgumentException($"Circular padding of {Math.Max(before, after)} needs an input {axis} of at least it, but got input of shape {PythonText.Shape(input.shape)}.", nameof(input));
        }
    }

    /// <summary>The module's parameters and settings still describe a valid convolution; returns the weight.</summary>
    private Parameter ValidateState()
    {
        if (groups <= 0 || in_channels % groups != 0 || out_channels % groups != 0)
            throw new InvalidOperationException($"groups must be positive and divide in_channels={in_channels} and out_channels={out_channels}, but the module has groups={groups}.");
        if (kernel_size.Length != 2 || stride.Length != 2 || dilation.Length != 2 || (padding is not null && padding.Length != 2)
            || Array.Exists(kernel_size, v => v <= 0) || Array.Exists(stride, v => v <= 0) || Array.Exists(dilation, v => v <= 0)
            || (padding is not null && Array.Exists(padding, v => v < 0)))
            throw new InvalidOperationException($"kernel_size, stride and dilation must be 2 positive numbers and padding 2 non-negative ones, but the module has kernel_size={PythonTuple(kernel_size)}, stride={PythonTuple(stride)}, dilation={PythonTuple(dilation)}, padding={(padding is null ? padding_type.ToString() : PythonTuple(padding))}.");

        var w = _weight;
        if (w is null || w.IsInvalid)
            throw new InvalidOperationException("The module's weight has been disposed.");
        if (w.ndim != 4 || w.size(0) != out_channels || w.size(1) != in_channels / groups || w.size(2) != kernel_size[0] || w.size(3) != kernel_size[1])
            throw new InvalidOperationException($"Expected weight of shape [{out_channels}, {in_channels / groups}, {kernel_size[0]}, {kernel_size[1]}] (out_channels, in_channels / groups, kernel_size), but the module's weight has shape {PythonText.Shape(w.shape)}.");
        if (!DTypeRules.IsSupported(w.dtype))
            throw new InvalidOperationException($"Expected a floating-point weight, but the module's weight has dtype {w.dtype}.");

        var b = _bias;
        if (b is null) return w;
        if (b.IsInvalid)
            throw new InvalidOperationException("The module's bias has been disposed.");
        if (b.ndim != 1 || b.size(0) != out_channels)
            throw new InvalidOperationException($"Expected bias of shape [{out_channels}], but the module's bias has shape {PythonText.Shape(b.shape)}.");
        if (b.dtype != w.dtype || !SameDevice(b, w))
            throw new InvalidOperationException($"Expected bias of the weight's dtype and device ({w.dtype} on {w.device}), but the module's bias is {b.dtype} on {b.device}.");
        return w;
    }

    private static bool SameDevice(Tensor a, Tensor b) =>
        a.device_type == b.device_type && (a.device_type == DeviceType.CPU || a.device_index == b.device_index);
}
