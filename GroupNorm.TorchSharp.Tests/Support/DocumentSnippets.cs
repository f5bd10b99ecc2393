using System;
using System.Linq;
using NUnit.Framework;

namespace GroupNormalization.Tests.Support;

/// <summary>
/// Code that a document shows is code that a test compiles and runs: the document's fenced block after
/// <c>&lt;!-- snippet: NAME --&gt;</c> must equal, line for line, the lines of a test source between
/// <c>// snippet: NAME</c> and <c>// end snippet</c> (each side with its common indentation removed).
/// </summary>
internal static class DocumentSnippets
{
    public static void AssertShown(string document, string source, string name)
    {
        var shown = FromDocument(System.IO.File.ReadAllLines(Repository.File(document)), name, document);
        var compiled = FromSource(System.IO.File.ReadAllLines(Repository.File(source)), name, source);
        Assert.That(shown, Is.EqualTo(compiled),
            $"{document}'s snippet '{name}' differs from {source}'s: copy the source's lines between '// snippet: {name}' and '// end snippet' into the document.");
    }

    private static string[] FromDocument(string[] lines, string name, string document)
    {
        int marker = Array.FindIndex(lines, l => l.Trim() == $"<!-- snippet: {name} -->");
        if (marker < 0) throw new AssertionException($"{document} has no '<!-- snippet: {name} -->'.");
        int open = Array.FindIndex(lines, marker + 1, l => l.TrimStart().StartsWith("```", StringComparison.Ordinal));
        int close = open < 0 ? -1 : Array.FindIndex(lines, open + 1, l => l.TrimStart().StartsWith("```", StringComparison.Ordinal));
        if (close < 0) throw new AssertionException($"{document}: no fenced code block after the snippet marker '{name}'.");
        return Dedent(lines[(open + 1)..close]);
    }

    private static string[] FromSource(string[] lines, string name, string source)
    {
        int begin = Array.FindIndex(lines, l => l.Trim() == $"// snippet: {name}");
        int end = begin < 0 ? -1 : Array.FindIndex(lines, begin + 1, l => l.Trim() == "// end snippet");
        if (end < 0) throw new AssertionException($"{source} has no '// snippet: {name}' … '// end snippet' region.");
        return Dedent(lines[(begin + 1)..end]);
    }

    private static string[] Dedent(string[] lines)
    {
        int indent = lines.Where(l => l.Trim().Length > 0).Select(l => l.Length - l.TrimStart().Length).DefaultIfEmpty(0).Min();
        return lines.Select(l => l.Trim().Length == 0 ? "" : l[indent..].TrimEnd()).ToArray();
    }
}
