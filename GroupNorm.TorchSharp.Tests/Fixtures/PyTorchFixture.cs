using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Text.Json;
using GroupNormalization.Tests.Support;
using static TorchSharp.torch;

namespace GroupNormalization.Tests.Fixtures;

/// <summary>
/// One PyTorch reference fixture (see tools/pytorch_reference.py for how it is made): the inputs of a
/// group_norm call, PyTorch's outputs in the fixture's dtype, and for non-float64 fixtures the float64
/// answer for the same inputs under the "f64." prefix.
/// </summary>
internal sealed class PyTorchFixture
{
    /// <summary>
    /// How many fixtures tools/pytorch_reference.py writes. Changing the script's configurations means
    /// changing this too, so that a fixture lost on the way to the test output cannot go unnoticed.
    /// </summary>
    public const int ExpectedCount = 37;

    public const string Format = "groupnorm-torchsharp-fixture/1";

    /// <summary>The outputs every fixture may hold, in the order reports list them.</summary>
    public static readonly string[] OutputNames = { "y", "dx", "dweight", "dbias", "ddx", "ddweight" };

    private readonly SafeTensorsFile _file;

    private PyTorchFixture(string name, SafeTensorsFile file)
    {
        Name = name;
        _file = file;
        var meta = file.Metadata;
        if (Meta("format") != Format)
            throw new InvalidDataException($"{name}: format '{Meta("format")}', expected '{Format}'.");
        Dtype = Meta("dtype") switch
        {
            "float64" => ScalarType.Float64,
            "float32" => ScalarType.Float32,
            "float16" => ScalarType.Float16,
            "bfloat16" => ScalarType.BFloat16,
            var other => throw new InvalidDataException($"{name}: unknown dtype '{other}'."),
        };
        NumGroups = long.Parse(Meta("num_groups"), CultureInfo.InvariantCulture);
        Eps = double.Parse(Meta("eps"), NumberStyles.Float, CultureInfo.InvariantCulture);
        ChannelsLast = Meta("memory_format") == "channels_last";
        LargeMean = Meta("large_mean") == "true";
        TorchVersion = Meta("torch_version");
        Shape = JsonSerializer.Deserialize<long[]>(Meta("shape")) ?? throw new InvalidDataException($"{name}: no shape.");

        string Meta(string key) =>
            meta.TryGetValue(key, out var value) ? value : throw new InvalidDataException($"{name}: metadata lacks '{key}'.");
    }

    public string Name { get; }

    public ScalarType Dtype { get; }

    public long[] Shape { get; }

    public long NumGroups { get; }

    public double Eps { get; }

    /// <summary>x, dy and u are to be laid out with channels innermost, as PyTorch ran them.</summary>
    public bool ChannelsLast { get; }

    /// <summary>x = 1e4 + randn: PyTorch's own float32 outputs are too inaccurate to be an oracle.</summary>
    public bool LargeMean { get; }

    public string TorchVersion { get; }

    public bool Has(string tensor) => _file.Contains(tensor);

    /// <summary>A stored tensor, in the stored dtype and row-major layout.</summary>
    public Tensor Load(string tensor) => _file.Load(tensor);

    /// <summary>A stored tensor in the layout the fixture prescribes for x, dy and u.</summary>
    public Tensor LoadInLayout(string tensor)
    {
        var t = Load(tensor);
        return ChannelsLast ? TestTensors.ToChannelsLast(t) : t;
    }

    public static PyTorchFixture Read(string path) =>
        new(Path.GetFileNameWithoutExtension(path), SafeTensorsFile.Read(path));

    /// <summary>Where the build copies the fixtures (see the test project file).</summary>
    public static string Folder => Path.Combine(AppContext.BaseDirectory, "Fixtures", "pytorch");

    /// <summary>The fixture files present in the test output, sorted.</summary>
    public static IReadOnlyList<string> Files() =>
        Directory.Exists(Folder)
            ? Directory.GetFiles(Folder, "*.safetensors").OrderBy(p => p, StringComparer.Ordinal).ToArray()
            : Array.Empty<string>();

    public override string ToString() => Name;
}
