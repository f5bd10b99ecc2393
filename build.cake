// Build script: dotnet tool restore && dotnet cake --target=<Task>   (or ./build.sh --target=<Task>)
var target = Argument("target", "Test");
var configuration = Argument("configuration", "Release");
var backend = Argument("backend", "cpu");          // TorchSharp native bundle for tests/samples/benchmarks
var solution = "./GroupNorm.TorchSharp.sln";
var artifacts = Directory("./artifacts");

var sampleArgs = Argument("sample-args", "");

DotNetMSBuildSettings Props() => new DotNetMSBuildSettings().WithProperty("TorchSharpBackend", backend);

// On these VMs a minor page fault costs 10–20 µs, so whether glibc hands freed memory back to the system (its
// defaults) or keeps it decides how many fresh pages a training step faults in, and with it the speed. The
// Throughput and interleaved benchmark tasks therefore run once under each setting and print both;
// --glibc=defaults or --glibc=kept runs one.
var glibc = Argument("glibc", "both");
var keptAllocator = new Dictionary<string, string>
{
    ["MALLOC_MMAP_THRESHOLD_"] = "33554432",
    ["MALLOC_TRIM_THRESHOLD_"] = "1073741824",
};

List<(string Label, Dictionary<string, string> Environment)> AllocatorSettings()
{
    if (glibc is not ("both" or "defaults" or "kept"))
        throw new CakeException($"--glibc must be both, defaults or kept, but got '{glibc}'.");
    var settings = new List<(string, Dictionary<string, string>)>();
    if (glibc != "kept")
    {
        // A child inherits this process's environment: "defaults" would not be defaults with these set.
        foreach (var name in keptAllocator.Keys)
        {
            if (!string.IsNullOrEmpty(EnvironmentVariable(name)))
                throw new CakeException($"{name} is set in this environment, so the glibc-defaults run would not run with glibc's defaults; unset it and use --glibc=kept for the other setting.");
        }
        settings.Add(("glibc defaults", new Dictionary<string, string>()));
    }
    if (glibc != "defaults")
        settings.Add(("glibc keeping freed memory (MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824)", keptAllocator));
    return settings;
}

void UnderEachAllocator(Action<Dictionary<string, string>> run)
{
    foreach (var (label, environment) in AllocatorSettings())
    {
        Information("");
        Information($"==== {label} ====");
        run(environment);
    }
}

// The sample falls back to Fashion-MNIST unless it is told where its data is.
bool NeedsOfflineDataset() =>
    new[] { "Sample", "Study", "Throughput" }.Contains(target, StringComparer.OrdinalIgnoreCase)
    && !System.Text.RegularExpressions.Regex.IsMatch(sampleArgs, @"(^|\s)--(data|fashion-mnist)(\s|=|$)");

// Runs first, before anything is restored or built, so that a machine that cannot load TorchSharp's
// native library fails in seconds with the commands that fix it rather than after the build.
// On Linux, tools/setup-linux.sh installs what is missing when run as root with apt-get, and otherwise
// prints the exact commands; elsewhere TorchSharp's native packages need nothing from the system.
Task("Setup")
    .Does(() =>
{
    if (!IsRunningOnLinux())
    {
        Information("Setup: nothing to install on this platform.");
        return;
    }
    var arguments = new ProcessArgumentBuilder().Append("tools/setup-linux.sh");
    if (NeedsOfflineDataset()) arguments.Append("--with-datasets");
    var exitCode = StartProcess("bash", new ProcessSettings { Arguments = arguments });
    if (exitCode != 0)
        throw new CakeException($"Setup: this machine is not ready (tools/setup-linux.sh exited with {exitCode}; see above). Nothing was built.");
});

Task("Clean")
    .Does(() =>
{
    CleanDirectory(artifacts);
    DotNetClean(solution, new DotNetCleanSettings { Configuration = configuration, MSBuildSettings = Props() });
});

Task("Restore")
    .Does(() =>
{
    DotNetRestore(solution, new DotNetRestoreSettings { MSBuildSettings = Props() });
});

Task("Build")
    .IsDependentOn("Restore")
    .Does(() =>
{
    DotNetBuild(solution, new DotNetBuildSettings { Configuration = configuration, NoRestore = true, MSBuildSettings = Props() });
});

// Each test project writes its own TRX (artifacts/test-results/<project>.trx); .ci/run adds them up.
var testProjects = new[]
{
    "./GroupNorm.TorchSharp.Tests/GroupNorm.TorchSharp.Tests.csproj",
    "./samples/ResNetCifar.Tests/ResNetCifar.Tests.csproj",
};

const string LargeMemoryExcluded = "TestCategory!=LargeMemory";

// One test project on the build under test, its results in <results>/<name>.trx.
void RunTestProject(string project, ConvertableDirectoryPath results, string name, string filter, Dictionary<string, string> environment, string verbosity)
{
    DotNetTest(project, new DotNetTestSettings
    {
        Configuration = configuration,
        NoBuild = true,
        NoRestore = true,
        MSBuildSettings = Props(),
        ResultsDirectory = results,
        Filter = filter,
        EnvironmentVariables = environment ?? new Dictionary<string, string>(),
        Loggers = new[] { $"trx;LogFileName={name}.trx", $"console;verbosity={verbosity}" },
    });
}

// Packs first: GroupNorm.TorchSharp.Tests/Packaging opens the package in artifacts/packages.
Task("Test")
    .IsDependentOn("Setup")
    .IsDependentOn("Pack")
    .Does(() =>
{
    var results = artifacts + Directory("test-results");
    CleanDirectory(results);
    // Every suite runs even when an earlier one fails, so that one run reports all failures.
    var failedProjects = new List<string>();
    foreach (var project in testProjects)
    {
        var name = System.IO.Path.GetFileNameWithoutExtension(project);
        try
        {
            // An [Explicit] test left out of a run still counts in the TRX total, where .ci/run would
            // report it as skipped; the 8 GiB one has its own task (TestLargeMemory).
            RunTestProject(project, results, name, LargeMemoryExcluded, null, "normal");
        }
        catch (CakeException e)
        {
            Error($"{name}: {e.Message}");
            failedProjects.Add(name);
        }
    }
    // The fused kernels have three code paths chosen by the CPU: 512-bit pairs for SiLU on AVX-512,
    // Vector<T> loops, and scalar loops where SIMD is off. Whatever this machine has, the tests that reach
    // the kernels run again with AVX-512 off and with SIMD off, so that every path is checked here.
    foreach (var (suffix, variable) in new[] { ("no-avx512", "DOTNET_EnableAVX512F"), ("no-simd", "DOTNET_EnableHWIntrinsic") })
    {
        var name = $"GroupNorm.TorchSharp.Tests-{suffix}";
        try
        {
            RunTestProject("./GroupNorm.TorchSharp.Tests/GroupNorm.TorchSharp.Tests.csproj", results, name,
                $"(FullyQualifiedName~.Parity.|FullyQualifiedName~.Kernels.|FullyQualifiedName~.Autograd.)&FullyQualifiedName!~Cuda&{LargeMemoryExcluded}",
                new Dictionary<string, string> { [variable] = "0" }, "minimal");
        }
        catch (CakeException e)
        {
            Error($"{name}: {e.Message}");
            failedProjects.Add(name);
        }
    }
    if (failedProjects.Count > 0)
        throw new CakeException($"Tests failed in {string.Join(", ", failedProjects)}.");
});

// The Test task's two suites, run round after round in a shuffled order (GroupNorm.TorchSharp.Tests/Support/
// ShuffledOrder.cs: fixtures, tests and cases reordered from GROUPNORM_TEST_ORDER_SEED), so that a test
// which passes only after or before another fails under some seed. Seeds first-seed … first-seed+rounds−1;
// a failing round names its seed, which replays the order: GROUPNORM_TEST_ORDER_SEED=<seed> dotnet test ….
var rounds = Argument("rounds", 10);
var firstSeed = Argument("first-seed", 1);

Task("TestShuffled")
    .IsDependentOn("Setup")
    .IsDependentOn("Pack")
    .Does(() =>
{
    var failures = new List<string>();
    for (int round = 0; round < rounds; round++)
    {
        int seed = firstSeed + round;
        var results = artifacts + Directory("test-results-shuffled") + Directory($"seed-{seed}");
        CleanDirectory(results);
        foreach (var project in testProjects)
        {
            var name = System.IO.Path.GetFileNameWithoutExtension(project);
            try
            {
                RunTestProject(project, results, name, LargeMemoryExcluded,
                    new Dictionary<string, string> { ["GROUPNORM_TEST_ORDER_SEED"] = seed.ToString(System.Globalization.CultureInfo.InvariantCulture) }, "minimal");
            }
            catch (CakeException e)
            {
                Error($"seed {seed}, {name}: {e.Message}");
                failures.Add($"seed {seed} ({name})");
            }
        }
        Information($"Round {round + 1} of {rounds} (seed {seed}): {(failures.Any(f => f.StartsWith($"seed {seed} ")) ? "FAILED" : "passed")}.");
    }
    if (failures.Count > 0)
        throw new CakeException($"Shuffled rounds failed: {string.Join(", ", failures)}.");
    Information($"{rounds} shuffled rounds passed (seeds {firstSeed}–{firstSeed + rounds - 1}).");
});

// A real group of more than 2^31 elements (bfloat16, 8 GiB, minutes on 2 cores): the index math past
// 2^31 with real memory. Not part of Test; the unit tests in Kernels/Cpu/IndexMathTests.cs pin the same
// arithmetic without the allocation.
Task("TestLargeMemory")
    .IsDependentOn("Setup")
    .IsDependentOn("Build")
    .Does(() =>
{
    DotNetTest("./GroupNorm.TorchSharp.Tests/GroupNorm.TorchSharp.Tests.csproj", new DotNetTestSettings
    {
        Configuration = configuration,
        NoBuild = true,
        NoRestore = true,
        MSBuildSettings = Props(),
        Filter = "TestCategory=LargeMemory",
        Loggers = new[] { "console;verbosity=normal" },
    });
});

Task("Pack")
    .IsDependentOn("Build")
    .Does(() =>
{
    var packages = artifacts + Directory("packages");
    CleanDirectory(packages);
    DotNetPack("./GroupNorm.TorchSharp/GroupNorm.TorchSharp.csproj", new DotNetPackSettings
    {
        Configuration = configuration,
        NoBuild = true,
        NoRestore = true,
        OutputDirectory = packages,
    });
});

void RunBenchmarks(string arguments, Dictionary<string, string> environment = null)
{
    DotNetRun("./benchmarks/GroupNorm.Benchmarks/GroupNorm.Benchmarks.csproj", new ProcessArgumentBuilder().Append(arguments), new DotNetRunSettings
    {
        Configuration = configuration,
        NoBuild = true,
        NoRestore = true,
        MSBuildSettings = Props(),
        EnvironmentVariables = environment ?? new Dictionary<string, string>(),
    });
}

// Every benchmark, ours against the built-in; writes BenchmarkDotNet.Artifacts/groupnorm-table.md.
Task("Bench")
    .IsDependentOn("Setup")
    .IsDependentOn("Build")
    .Does(() => RunBenchmarks(Argument("bench-args", "")));

// Each benchmark once on one small shape: proves they all run (CI smoke test).
Task("BenchQuick")
    .IsDependentOn("Setup")
    .IsDependentOn("Build")
    .Does(() =>
{
    RunBenchmarks("--quick");
    RunBenchmarks("--quick --interleaved");
    RunBenchmarks("--quick --interleaved --suite activation");
    RunBenchmarks("--quick --interleaved --suite half");
    RunBenchmarks("--quick --interleaved --suite residual");
    RunBenchmarks("--quick --interleaved --suite diffusion");
});

// Ours and the built-in in alternating blocks, ratio per round: isolation, in-network and fixed cost.
// Robust to a machine whose speed drifts. Runs under both glibc settings (see --glibc above).
Task("BenchInterleaved")
    .IsDependentOn("Setup")
    .IsDependentOn("Build")
    .Does(() => UnderEachAllocator(environment => RunBenchmarks(("--interleaved " + Argument("bench-args", "")).Trim(), environment)));

// Fused GN+SiLU, GN+GELU and GN+ReLU against group_norm then silu/gelu/relu, float32, interleaved: Stable Diffusion's UNet and
// VAE shapes and the benchmark shapes. --bench-args narrows it: "--act GELU", "--shape 2x320x64x64 --rounds 5", "--max-numel 5000000"
// (no VAE), "--quick" (one small shape, 2 rounds). BenchmarkDotNet: --target=Bench --bench-args="--filter *FusedActivation*".
Task("BenchActivation")
    .IsDependentOn("Setup")
    .IsDependentOn("Build")
    .Does(() => RunBenchmarks(("--interleaved --suite activation " + Argument("bench-args", "")).Trim()));

// Fused GN+add+ReLU (a ResNet block's norm2 → add → ReLU) against group_norm, add_ and relu_, float32, NCHW and
// channels_last, interleaved, with page faults per call; under both glibc settings (see --glibc above).
Task("BenchResidual")
    .IsDependentOn("Setup")
    .IsDependentOn("Build")
    .Does(() => UnderEachAllocator(environment => RunBenchmarks(("--interleaved --suite residual " + Argument("bench-args", "")).Trim(), environment)));

// Stable Diffusion's residual block (GN → SiLU → Conv3×3, twice, plus the skip) with the built-in group_norm then silu,
// ours plain and ours fused as its norms: float32 and bfloat16 forward, float32 forward+backward, six VAE and UNet
// shapes, interleaved, with page faults per call; under both glibc settings (see --glibc above), 8–10 minutes each
// on 2 cores. --bench-args narrows it: "--shape 2x320x64x64 --rounds 5", "--quick" (one small shape, 2 rounds).
Task("BenchDiffusion")
    .IsDependentOn("Setup")
    .IsDependentOn("Build")
    .Does(() => UnderEachAllocator(environment => RunBenchmarks(("--interleaved --suite diffusion " + Argument("bench-args", "")).Trim(), environment)));

// float16 and bfloat16 against the built-in in the same dtype, interleaved; the VAE shape is slow in half precision,
// --bench-args="--max-numel 5000000" leaves it out. BenchmarkDotNet: --target=Bench --bench-args="--filter *HalfPrecision*".
Task("BenchHalf")
    .IsDependentOn("Setup")
    .IsDependentOn("Build")
    .Does(() => RunBenchmarks(("--interleaved --suite half " + Argument("bench-args", "")).Trim()));

// Peak resident memory of one forward+backward, ours against the built-in.
Task("BenchMemory")
    .IsDependentOn("Setup")
    .IsDependentOn("Build")
    .Does(() => RunBenchmarks("--memory"));

// The ResNet sample (samples/ResNetCifar). Extra command-line arguments go through --sample-args, e.g.
//   dotnet cake --target=Sample --sample-args="--epochs 3 --batch-size 128 --threads 1"
void RunSample(string command, string fixedArguments = "", Dictionary<string, string> environment = null)
{
    var arguments = new ProcessArgumentBuilder();
    if (command.Length > 0) arguments.Append(command);
    if (fixedArguments.Length > 0) arguments.Append(fixedArguments);
    if (sampleArgs.Length > 0) arguments.Append(sampleArgs);
    DotNetRun("./samples/ResNetCifar/ResNetCifar.csproj", arguments, new DotNetRunSettings
    {
        Configuration = configuration,
        NoBuild = true,
        NoRestore = true,
        MSBuildSettings = Props(),
        EnvironmentVariables = environment ?? new Dictionary<string, string>(),
    });
}

// ResNet-20 with our GroupNorm for one epoch on real data (CIFAR-10 with --data, else Fashion-MNIST offline); test accuracy per epoch.
Task("Sample")
    .IsDependentOn("Setup")
    .IsDependentOn("Build")
    .Does(() => RunSample(""));

// GroupNorm against BatchNorm at batch sizes 32..2; writes study.csv and study.png to --study-out.
Task("Study")
    .IsDependentOn("Setup")
    .IsDependentOn("Build")
    .Does(() => RunSample("study", "--out " + Argument("study-out", "./samples/ResNetCifar/results")));

// Training images/s of ResNet-20 with our GroupNorm against TorchSharp's nn.GroupNorm, alternating in one process.
Task("Throughput")
    .IsDependentOn("Setup")
    .IsDependentOn("Build")
    .Does(() =>
{
    EnsureDirectoryExists(artifacts);
    var summary = artifacts + File("throughput-summary.md");
    if (FileExists(summary)) DeleteFile(summary);
    UnderEachAllocator(environment => RunSample("throughput", $"--summary \"{MakeAbsolute(summary)}\"", environment));
    Information("");
    Information("Throughput under each glibc setting (medians over rounds):");
    Information(System.IO.File.ReadAllText(MakeAbsolute(summary).FullPath));
});

RunTarget(target);
