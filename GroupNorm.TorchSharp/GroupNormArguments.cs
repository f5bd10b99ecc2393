using System;
using GroupNormalization.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization;

/// <summary>
/// Every check of a group_norm call, done once at the public boundary so that nothing malformed
/// reaches libtorch, and nothing can fail later inside backward (where an exception aborts the process).
/// Messages name the argument and the offending value, in PyTorch's wording where PyTorch has one.
/// </summary>
internal static class GroupNormArguments
{
    public static void ValidateNumGroups(long num_groups)
    {
        if (num_groups <= 0)
            throw new ArgumentOutOfRangeException(nameof(num_groups), num_groups, $"num_groups must be positive, but got num_groups={num_groups}.");
    }

    public static void ValidateNumChannels(long num_channels, long num_groups)
    {
        if (num_channels <= 0)
            throw new ArgumentOutOfRangeException(nameof(num_channels), num_channels, $"num_channels must be positive, but got num_channels={num_channels}.");
        if (num_channels % num_groups != 0)
            throw new ArgumentException($"num_channels must be divisible by num_groups, but got num_channels={num_channels} and num_groups={num_groups}.", nameof(num_channels));
    }

    public static void ValidateEps(double eps)
    {
        if (double.IsNaN(eps) || eps < 0)
            throw new ArgumentOutOfRangeException(nameof(eps), eps, $"eps must be a non-negative number, but got eps={PythonText.Repr(eps)}.");
    }

    public static void ValidateActivation(Activation activation)
    {
        if (!Enum.IsDefined(activation))
            throw new ArgumentOutOfRangeException(nameof(activation), activation, $"activation must be one of None, SiLU, ReLU or GELU, but got activation={(int)activation}.");
    }

    /// <summary>
    /// Checks a whole call and returns its geometry. <c>num_channels</c> is the channel count a module was
    /// built for, or null for the functional form.
    /// </summary>
    public static GroupNormShape Validate(Tensor input, long num_groups, Tensor? weight, Tensor? bias, double eps, long? num_channels = null,
        Activation activation = Activation.None, Tensor? residual = null)
    {
        ArgumentNullException.ThrowIfNull(input);
        RequireLive(input, nameof(input));
        ValidateNumGroups(num_groups);
        ValidateEps(eps);
        ValidateActivation(activation);

        if (input.is_sparse)
            throw new ArgumentException("group_norm expects a dense (strided) input, but got a sparse tensor.", nameof(input));

        var dtype = input.dtype;
        if (!DTypeRules.IsSupported(dtype))
            throw new ArgumentException($"group_norm expects a floating-point input (Float16, BFloat16, Float32 or Float64), but got input of dtype {dtype}.", nameof(input));

        // Dimension by dimension: TorchSharp's whole-array `shape` goes through a marshalled callback that
        // costs more than the rest of this check; the array is built only for error messages.
        int rank = (int)input.ndim;
        if (rank < 2)
            throw new ArgumentException($"Expected at least 2 dimensions for input tensor but received {rank} (input of shape {PythonText.Shape(input.shape)}).", nameof(input));

        long n = input.size(0), c = input.size(1);
        if (num_channels is long expected && c != expected)
            throw new ArgumentException($"Expected input with {expected} channels (dimension 1), but got input of shape {PythonText.Shape(input.shape)}.", nameof(input));
        if (c % num_groups != 0)
            throw new ArgumentException($"Expected number of channels in input to be divisible by num_groups, but got input of shape {PythonText.Shape(input.shape)} and num_groups={num_groups}.", nameof(num_groups));

        long s = 1;
        for (int i = 2; i < rank; i++) s *= input.size(i);
        // PyTorch's F.group_norm refuses a batch whose every group is a single value (its variance is 0 and
        // the output is β whatever x is); an empty batch is allowed.
        if (n * (c / num_groups) * s == 1)
            throw new ArgumentException($"Expected more than 1 value per group, but got input of shape {PythonText.Shape(input.shape)} with num_groups={num_groups}: every group holds a single value.", nameof(input));

        ValidateParameter(weight, nameof(weight), input, c);
        ValidateParameter(bias, nameof(bias), input, c);
        if (weight is not null && bias is not null && weight.dtype != bias.dtype)
            throw new ArgumentException($"Expected weight and bias to have the same dtype, but got weight of dtype {weight.dtype} and bias of dtype {bias.dtype}.", nameof(bias));
        if (residual is not null) ValidateResidual(residual, input, rank);

        return new GroupNormShape(n, c, num_groups, s);
    }

    // The residual is added element by element, so it must be x's twin: no broadcasting, no type
    // promotion (the sum is rounded once, to x's dtype), the same device. Its layout may differ.
    private static void ValidateResidual(Tensor residual, Tensor input, int rank)
    {
        const string name = nameof(residual);
        RequireLive(residual, name);
        if (residual.is_sparse)
            throw new ArgumentException("Expected residual to be a dense (strided) tensor, but got a sparse tensor.", name);
        bool sameShape = residual.ndim == rank;
        for (int i = 0; sameShape && i < rank; i++) sameShape = residual.size(i) == input.size(i);
        if (!sameShape)
            throw new ArgumentException($"Expected residual to have the input's shape {PythonText.Shape(input.shape)}, but got residual of shape {PythonText.Shape(residual.shape)}.", name);
        if (residual.dtype != input.dtype)
            throw new ArgumentException($"Expected residual to have the input's dtype ({input.dtype}), but got residual of dtype {residual.dtype}.", name);
        if (residual.device_type != input.device_type || (input.device_type != DeviceType.CPU && residual.device_index != input.device_index))
            throw new ArgumentException($"Expected residual to be on the same device as input ({input.device}), but got residual on {residual.device}.", name);
    }

    private static void ValidateParameter(Tensor? p, string name, Tensor input, long channels)
    {
        if (p is null) return;
        RequireLive(p, name);
        if (p.ndim != 1 || p.size(0) != channels)
            throw new ArgumentException($"Expected {name} to be a vector of size equal to the number of channels in input, but got {name} of shape {PythonText.Shape(p.shape)} and input of shape {PythonText.Shape(input.shape)}.", name);
        if (p.is_sparse)
            throw new ArgumentException($"Expected {name} to be a dense (strided) tensor, but got a sparse tensor.", name);
        if (p.dtype != input.dtype && !DTypeRules.IsMixedPrecision(input.dtype, p.dtype))
            throw new ArgumentException($"Expected {name} to have the same dtype as input ({input.dtype}), or Float32 for a Float16/BFloat16 input, but got {name} of dtype {p.dtype}. Convert the module with .to({input.dtype}) or the input with .to({p.dtype}).", name);
        var pType = p.device_type;
        var inputType = input.device_type;
        if (pType != inputType || (pType != DeviceType.CPU && p.device_index != input.device_index))
            throw new ArgumentException($"Expected {name} to be on the same device as input ({input.device}), but got {name} on {p.device}.", name);
    }

    private static void RequireLive(Tensor t, string name)
    {
        if (t.IsInvalid)
            throw new ArgumentException($"{name} has been disposed; its native tensor no longer exists.", name);
    }
}
