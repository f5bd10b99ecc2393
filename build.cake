// Build script: dotnet tool restore && dotnet cake --target=<Task>   (or ./build.sh --target=<Task>)
var target = Argument("target", "Test");
var configuration = Argument("configuration", "Release");
var backend = Argument("backend", "cpu");          // TorchSharp native bundle for tests/samples/benchmarks
var solution = "./GroupNorm.TorchSharp.sln";
var artifacts = Directory("./artifacts");

DotNetMSBuildSettings Props() => new DotNetMSBuildSettings().WithProperty("TorchSharpBackend", backend);

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

Task("Test")
    .IsDependentOn("Build")
    .Does(() =>
{
    var results = artifacts + Directory("test-results");
    CleanDirectory(results);
    DotNetTest(solution, new DotNetTestSettings
    {
        Configuration = configuration,
        NoBuild = true,
        NoRestore = true,
        MSBuildSettings = Props(),
        ResultsDirectory = results,
        Loggers = new[] { "trx;LogFileName=tests.trx", "console;verbosity=normal" },
    });
});

Task("Pack")
    .IsDependentOn("Build")
    .Does(() =>
{
    DotNetPack("./GroupNorm.TorchSharp/GroupNorm.TorchSharp.csproj", new DotNetPackSettings
    {
        Configuration = configuration,
        NoBuild = true,
        NoRestore = true,
        OutputDirectory = artifacts + Directory("packages"),
    });
});

RunTarget(target);
