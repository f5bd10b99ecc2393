using System;
using System.Globalization;
using NUnit.Framework;
using NUnit.Framework.Interfaces;
using NUnit.Framework.Internal;

[assembly: GroupNormalization.Tests.Support.ShuffledOrder]

namespace GroupNormalization.Tests.Support;

/// <summary>
/// Runs the tests in a shuffled order when <c>GROUPNORM_TEST_ORDER_SEED</c> is set: every fixture, every
/// test in a fixture and every case of a parameterized test gets a random <see cref="OrderAttribute"/>
/// value drawn from that seed, which NUnit sorts by. A test that passes only after (or before) another
/// shows up as a failure under some seed; the seed is printed, so that the order can be replayed.
/// Unset, the order is NUnit's usual one.
/// </summary>
[AttributeUsage(AttributeTargets.Assembly)]
public sealed class ShuffledOrderAttribute : NUnitAttribute, IApplyToTest
{
    public const string SeedVariable = "GROUPNORM_TEST_ORDER_SEED";

    public void ApplyToTest(Test test)
    {
        var text = Environment.GetEnvironmentVariable(SeedVariable);
        if (string.IsNullOrEmpty(text)) return;
        int seed = int.Parse(text, CultureInfo.InvariantCulture);
        Console.WriteLine($"Test order shuffled with {SeedVariable}={seed}.");
        Shuffle(test, new Random(seed));
    }

    private static void Shuffle(ITest test, Random random)
    {
        foreach (var child in test.Tests)
        {
            child.Properties.Set(PropertyNames.Order, random.Next());
            Shuffle(child, random);
        }
    }
}
