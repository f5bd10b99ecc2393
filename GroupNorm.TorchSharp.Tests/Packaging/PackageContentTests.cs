using System;
using System.IO;
using System.IO.Compression;
using System.Linq;
using System.Reflection;
using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;
using System.Text;
using System.Text.RegularExpressions;
using System.Xml.Linq;
using GroupNormalization.Tests.Support;
using NUnit.Framework;
using TorchSharp;

namespace GroupNormalization.Tests.Packaging;

/// <summary>
/// Opens the packages that <c>./build.sh --target=Test</c> packs before it tests (artifacts/packages)
/// and checks what a NuGet user would receive: the README and license, the library and its XML docs,
/// the TorchSharp range the README promises, repository metadata, and matching symbols with Source Link.
/// </summary>
/// <remarks>
/// A missing package, or one packed from another build than the library under test, fails rather than
/// skips: either way the package that would ship has not been checked.
/// </remarks>
public sealed partial class PackageContentTests
{
    private const string PackageId = "GroupNorm.TorchSharp";
    private const string TargetFramework = "net10.0";

    // The README's "which TorchSharp" line says the same. The library reads TorchSharp internals by
    // reflection, so a wider range would promise versions nobody has tested.
    private const string TorchSharpRange = "[0.107.0, 0.108.0)";

    // Portable PDB custom debug information kinds (System.Reflection.Metadata documents them).
    private static readonly Guid SourceLinkKind = new("CC110556-A091-4D38-9FEC-25AB9A351A6A");
    private static readonly Guid EmbeddedSourceKind = new("0E8A571B-6926-466E-B4AD-8AB04611F5FE");

    private static readonly string LibraryEntry = $"lib/{TargetFramework}/{PackageId}.dll";
    private static readonly string DocsEntry = $"lib/{TargetFramework}/{PackageId}.xml";
    private static readonly string SymbolsEntry = $"lib/{TargetFramework}/{PackageId}.pdb";

    private static readonly Assembly Library = typeof(GroupNorm).Assembly;

    private static string PackageVersion =>
        Library.GetCustomAttribute<AssemblyInformationalVersionAttribute>()!.InformationalVersion.Split('+')[0];

    [Test]
    public void PackageHoldsReadmeLicenseLibraryAndDocs()
    {
        using var package = OpenPackage("nupkg");
        var nuspec = Nuspec(package);

        Assert.Multiple(() =>
        {
            Assert.That(EntryBytes(package, "README.md"), Is.EqualTo(File.ReadAllBytes(Repository.File("README.md"))), "README.md is the repository's");
            Assert.That(EntryBytes(package, "LICENSE"), Is.EqualTo(File.ReadAllBytes(Repository.File("LICENSE"))), "LICENSE is the repository's");
            Assert.That(Element(nuspec, "readme").Value, Is.EqualTo("README.md"));
            Assert.That(Element(nuspec, "license").Value, Is.EqualTo("LICENSE"));
            Assert.That(Element(nuspec, "license").Attribute("type")?.Value, Is.EqualTo("file"));
            Assert.That(package.Entries.Select(e => e.FullName).Where(n => n.StartsWith("lib/", StringComparison.Ordinal)),
                Is.EquivalentTo(new[] { LibraryEntry, DocsEntry }), $"the library and its docs, for {TargetFramework} only");
        });

        var docs = EntryXml(package, DocsEntry);
        var members = docs.Descendants("member").Select(m => m.Attribute("name")?.Value).ToList();
        Assert.Multiple(() =>
        {
            Assert.That(docs.Root?.Element("assembly")?.Element("name")?.Value, Is.EqualTo(PackageId));
            Assert.That(members, Does.Contain("T:GroupNormalization.GroupNorm"));
            Assert.That(members, Does.Contain("T:GroupNormalization.Conversion.BatchNormConverter"));
            Assert.That(members.Count(m => m!.StartsWith("M:GroupNormalization.Functional.group_norm", StringComparison.Ordinal)), Is.EqualTo(1));
        });
    }

    [Test]
    public void PackagedLibraryIsTheDeterministicBuildUnderTest()
    {
        using var package = OpenPackage("nupkg");
        using var pe = new PEReader(new MemoryStream(EntryBytes(package, LibraryEntry)));
        var metadata = pe.GetMetadataReader();

        Assert.That(metadata.GetGuid(metadata.GetModuleDefinition().Mvid), Is.EqualTo(Library.ManifestModule.ModuleVersionId),
            "the package holds another build of the library than the one these tests ran against: " +
            "pack after building (./build.sh --target=Test packs before it tests)");
        Assert.That(pe.ReadDebugDirectory().Select(e => e.Type), Does.Contain(DebugDirectoryEntryType.Reproducible),
            "built with /deterministic");
    }

    [Test]
    public void NuspecDeclaresTheTorchSharpRangeAndTheRepository()
    {
        using var package = OpenPackage("nupkg");
        var nuspec = Nuspec(package);
        var dependencies = nuspec.Descendants(nuspec.Name.Namespace + "dependency").ToList();
        var repository = Element(nuspec, "repository");
        var projectUrl = Element(nuspec, "projectUrl").Value;

        Assert.Multiple(() =>
        {
            Assert.That(Element(nuspec, "id").Value, Is.EqualTo(PackageId));
            Assert.That(Element(nuspec, "version").Value, Is.EqualTo(PackageVersion));
            Assert.That(dependencies.Select(d => (d.Attribute("id")?.Value, d.Attribute("version")?.Value)),
                Is.EqualTo(new[] { ("TorchSharp", TorchSharpRange) }), "TorchSharp is the only dependency");
            Assert.That(dependencies.Select(d => d.Parent?.Attribute("targetFramework")?.Value), Is.All.EqualTo(TargetFramework));
            Assert.That(projectUrl, Does.StartWith("https://"));
            Assert.That(repository.Attribute("type")?.Value, Is.EqualTo("git"));
            Assert.That(repository.Attribute("url")?.Value, Is.EqualTo(projectUrl));
            Assert.That(repository.Attribute("commit")?.Value, Does.Match("^[0-9a-f]{40}$"));
            Assert.That(Element(nuspec, "tags").Value.Split(' '), Does.Contain("torchsharp").And.Contain("groupnorm"));
            Assert.That(Element(nuspec, "releaseNotes").Value, Does.Contain(PackageVersion).And.Contain("CHANGELOG.md"));
        });

        // The range must admit the TorchSharp these tests ran against, or it names versions nobody ran.
        var tested = typeof(torch).Assembly.GetName().Version!;
        var bounds = RangePattern().Match(TorchSharpRange);
        Assert.That(bounds.Success, Is.True);
        var (lower, upper) = (Version.Parse(bounds.Groups[1].Value), Version.Parse(bounds.Groups[2].Value));
        var testedVersion = new Version(tested.Major, tested.Minor, tested.Build);
        Assert.That(testedVersion >= lower && testedVersion < upper, Is.True, $"tested TorchSharp {testedVersion} is outside {TorchSharpRange}");

        var changelog = File.ReadAllText(Repository.File("CHANGELOG.md"));
        Assert.That(changelog, Does.Contain($"## [{PackageVersion}]"), "CHANGELOG.md has an entry for the packed version");
    }

    [Test]
    public void SymbolPackageHoldsTheMatchingPdbWithSourceLink()
    {
        using var package = OpenPackage("nupkg");
        using var symbols = OpenPackage("snupkg");
        using var pe = new PEReader(new MemoryStream(EntryBytes(package, LibraryEntry)));
        var codeView = pe.ReadCodeViewDebugDirectoryData(pe.ReadDebugDirectory().Single(e => e.Type == DebugDirectoryEntryType.CodeView));
        var commit = Element(Nuspec(package), "repository").Attribute("commit")?.Value;

        using var pdbProvider = MetadataReaderProvider.FromPortablePdbStream(new MemoryStream(EntryBytes(symbols, SymbolsEntry)));
        var pdb = pdbProvider.GetMetadataReader();
        var pdbId = new BlobContentId(pdb.DebugMetadataHeader!.Id);
        var sourceLink = pdb.GetCustomDebugInformation(EntityHandle.ModuleDefinition)
            .Select(pdb.GetCustomDebugInformation)
            .Where(info => pdb.GetGuid(info.Kind) == SourceLinkKind)
            .Select(info => Encoding.UTF8.GetString(pdb.GetBlobBytes(info.Value)))
            .SingleOrDefault();
        var embeddedSources = pdb.Documents
            .Count(d => pdb.GetCustomDebugInformation(d).Any(h => pdb.GetGuid(pdb.GetCustomDebugInformation(h).Kind) == EmbeddedSourceKind));

        Assert.Multiple(() =>
        {
            Assert.That(symbols.Entries.Select(e => e.FullName), Does.Contain(SymbolsEntry));
            Assert.That(pdbId.Guid, Is.EqualTo(codeView.Guid), "the PDB belongs to the packaged library");
            Assert.That(sourceLink, Is.Not.Null, "Source Link is embedded in the PDB");
            Assert.That(sourceLink, Does.Contain(commit), "Source Link points at the packed commit");
            Assert.That(embeddedSources, Is.GreaterThan(0), "generated sources are embedded (EmbedUntrackedSources)");
        });
    }

    [GeneratedRegex(@"^\[([0-9.]+), ([0-9.]+)\)$")]
    private static partial Regex RangePattern();

    private static ZipArchive OpenPackage(string extension)
    {
        var path = Path.Combine(Repository.Root(), "artifacts", "packages", $"{PackageId}.{PackageVersion}.{extension}");
        if (!File.Exists(path))
            throw new AssertionException($"{path} does not exist. './build.sh --target=Test' packs before it tests; './build.sh --target=Pack' packs alone.");
        return ZipFile.OpenRead(path);
    }

    private static byte[] EntryBytes(ZipArchive archive, string name)
    {
        var entry = archive.GetEntry(name)
            ?? throw new AssertionException($"the package has no {name}; it has {string.Join(", ", archive.Entries.Select(e => e.FullName))}");
        using var stream = entry.Open();
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    }

    // XDocument.Load rather than Parse: NuGet writes the nuspec with a byte-order mark.
    private static XDocument EntryXml(ZipArchive archive, string name) => XDocument.Load(new MemoryStream(EntryBytes(archive, name)));

    private static XElement Nuspec(ZipArchive package) => EntryXml(package, $"{PackageId}.nuspec").Root!;

    private static XElement Element(XElement nuspec, string name) =>
        nuspec.Descendants(nuspec.Name.Namespace + name).FirstOrDefault()
        ?? throw new AssertionException($"the nuspec has no <{name}>");
}
