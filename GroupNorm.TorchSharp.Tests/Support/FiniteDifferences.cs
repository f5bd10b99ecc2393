using System;
using TorchSharp;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Support;

/// <summary>Central finite differences in float64, and the tolerances analytic derivatives are held to against them.</summary>
internal static class FiniteDifferences
{
    /// <summary>
    /// The step. Truncation ~h²·|f'''| ≈ 1e-12 and rounding ~2^-53·|f|/h ≈ 1e-10 for values of order 1, so
    /// <see cref="Tolerance"/> catches any wrong term while ignoring both.
    /// </summary>
    public const double Step = 1e-6;

    /// <summary>First derivatives, relative to the derivative's size but never to less than 1 (<see cref="Error"/>).</summary>
    public const double Tolerance = 1e-7;

    /// <summary>Second derivatives by differencing first ones: the same argument one derivative higher (values grow with r³ ≈ 1 to 10).</summary>
    public const double SecondOrderTolerance = 1e-6;

    /// <summary>∂f/∂at, entry by entry: (f(at + h·eᵢ) − f(at − h·eᵢ)) / 2h, shaped as <paramref name="at"/>.</summary>
    public static Tensor Gradient(Tensor at, Func<Tensor, double> f)
    {
        var flat = at.flatten();
        var g = torch.zeros(flat.numel(), ScalarType.Float64);
        for (long i = 0; i < flat.numel(); i++)
        {
            using var scope = torch.NewDisposeScope();
            var e = torch.zeros_like(flat);
            e[i] = Step;
            g[i] = (f((flat + e).reshape(at.shape)) - f((flat - e).reshape(at.shape))) / (2 * Step);
        }
        return g.reshape(at.shape);
    }

    /// <summary>max|analytic − numeric| / max(1, max|numeric|).</summary>
    public static double Error(Tensor analytic, Tensor numeric) => TestTensors.ScaledError(analytic, numeric, 1.0);
}
