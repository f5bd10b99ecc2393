using System;
using System.Collections.Generic;
using System.Linq;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace GroupNormalization.Conversion;

/// <summary>
/// The walk both converters share: find every place of every layer, decide what to swap and what to fold, plan
/// all the stores, and only then make them, so that a layer is swapped everywhere or nowhere.
/// <para>
/// Phases: (1) index the tree: how many places hold each module (registry entries, and C# fields of modules whose
/// registry does not list it) and which modules hold it; (2) walk it in registry order: in a plain
/// <c>Sequential</c> try to fold each norm → activation pair, elsewhere pair every norm child with every
/// activation child for the report; swap each of the rule's layers at its first place, planned in every holder;
/// (3) make the stores, then dispose what was replaced. A layer some of whose places cannot take a GroupNorm is
/// left everywhere and reported (or, where the rule says so, the whole conversion throws before any store).
/// </para>
/// </summary>
internal sealed class ConversionEngine
{
    /// <summary>What a conversion did, for the report.</summary>
    internal sealed record Result(IReadOnlyList<ConvertedLayer> Layers, IReadOnlyList<NotFusedPair> NotFused, IReadOnlyList<NotSwappedLayer> NotSwapped);

    private const string Fusable = "it fuses SiLU, ReLU and exact GELU";

    // Element-wise activations TorchSharp 0.107 has as modules and GroupNorm has no fused kernel for.
    private static readonly HashSet<Type> Unfusable =
    [
        typeof(CELU), typeof(ELU), typeof(Hardshrink), typeof(Hardsigmoid), typeof(Hardswish), typeof(Hardtanh), typeof(LeakyReLU),
        typeof(LogSigmoid), typeof(Mish), typeof(PReLU), typeof(ReLU6), typeof(RReLU), typeof(SELU), typeof(Sigmoid), typeof(Softplus),
        typeof(Softshrink), typeof(Softsign), typeof(Tanh), typeof(Tanhshrink), typeof(Threshold),
    ];

    private readonly ConversionRule _rule;
    private readonly Dictionary<nn.Module, int> _places = new(ReferenceEqualityComparer.Instance);
    private readonly Dictionary<nn.Module, List<nn.Module>> _holders = new(ReferenceEqualityComparer.Instance);
    private readonly Dictionary<nn.Module, string> _paths = new(ReferenceEqualityComparer.Instance);
    private readonly HashSet<nn.Module> _walked = new(ReferenceEqualityComparer.Instance);
    private readonly HashSet<nn.Module> _decided = new(ReferenceEqualityComparer.Instance);
    private readonly List<(Action store, nn.Module[] created)> _pending = [];
    private readonly List<nn.Module> _replaced = [];
    private readonly List<nn.Module> _foldedActivations = [];
    private readonly List<ConvertedLayer> _layers = [];
    private readonly List<NotFusedPair> _notFused = [];
    private readonly List<NotSwappedLayer> _notSwapped = [];

    private ConversionEngine(ConversionRule rule) => _rule = rule;

    /// <summary>Converts the tree under <paramref name="root"/> (not the root itself) by <paramref name="rule"/>.</summary>
    /// <exception cref="InvalidOperationException">The rule throws when blocked, and a layer's place cannot hold a GroupNorm; nothing changed.</exception>
    /// <exception cref="NotSupportedException">A layer inside a Sequential must be replaced and this TorchSharp lacks the internal for it; nothing changed.</exception>
    internal static Result Run(nn.Module root, ConversionRule rule)
    {
        var engine = new ConversionEngine(rule);
        engine.Index(root);
        try
        {
            engine.Walk(root, "");
            if (rule.ThrowsWhenBlocked && engine._notSwapped.Count > 0) throw new InvalidOperationException(engine.BlockedMessage());
        }
        catch
        {
            foreach (var (_, created) in engine._pending)
            {
                foreach (var module in created) module.Dispose();
            }
            throw;
        }
        engine.Commit();
        if (rule.DisposeReplaced) engine.DisposeReplaced(root);
        return new Result(engine._layers, engine._notFused, engine._notSwapped);
    }

    // ---------------------------------------------------------------- phase 1: where every module is held

    private void Index(nn.Module root)
    {
        var visited = new HashSet<nn.Module>(ReferenceEqualityComparer.Instance) { root };
        var pending = new Stack<nn.Module>();
        pending.Push(root);
        while (pending.TryPop(out var parent))
        {
            var children = parent.named_children().Select(c => c.module).ToList();
            foreach (var child in children)
            {
                AddPlace(child, parent);
                if (visited.Add(child)) pending.Push(child);
            }
            // A field that holds a module its class's registry does not list (a list of layers, an alias) is a place too.
            var registered = new HashSet<nn.Module>(children, ReferenceEqualityComparer.Instance);
            foreach (var held in ModuleReplacement.FieldReferences(parent))
            {
                if (!registered.Contains(held)) AddPlace(held, parent);
            }
        }
    }

    private void AddPlace(nn.Module module, nn.Module holder)
    {
        _places[module] = _places.GetValueOrDefault(module) + 1;
        if (!_holders.TryGetValue(module, out var holders)) _holders.Add(module, holders = []);
        if (!holders.Contains(holder, ReferenceEqualityComparer.Instance)) holders.Add(holder);
    }

    // ---------------------------------------------------------------- phase 2: decide and plan

    private void Walk(nn.Module parent, string prefix)
    {
        if (!_walked.Add(parent)) return;

        // Snapshot: nothing is stored before the walk ends, but the registry is read again by each plan.
        var children = parent.named_children().ToList();
        foreach (var (name, child) in children) _paths.TryAdd(child, prefix + name);
        var sequential = AsPlainSequential(parent);
        if (sequential is null) ReportHiddenOrder(parent, prefix, children);

        for (int i = 0; i < children.Count; i++)
        {
            var (name, child) = children[i];
            if (sequential is not null && i + 1 < children.Count && TryFold(sequential, prefix, i, children[i], children[i + 1]))
            {
                i++;
                continue;
            }
            if (_rule.IsTarget(child)) Swap(child, prefix + name);
            else Walk(child, prefix + name + ".");
        }
    }

    private void Swap(nn.Module target, string name)
    {
        if (!_decided.Add(target)) return;
        var kind = Replacements.KindOf(target);
        var built = _rule.Create(target, Activation.None);
        if (built.Module is not GroupNorm gn)
        {
            _notSwapped.Add(new NotSwappedLayer(name, kind, built.Reason, null, built.SourceChange));
            return;
        }

        var stores = new List<Action>();
        var blocked = new List<ModuleReplacement.BlockedPlace>();
        try
        {
            foreach (var holder in _holders[target])
            {
                var plan = ModuleReplacement.PlanReplacement(holder, target, gn);
                stores.Add(plan.Store);
                blocked.AddRange(plan.Blocked);
            }
        }
        catch
        {
            gn.Dispose();
            throw;
        }

        if (blocked.Count > 0)
        {
            gn.Dispose();
            _notSwapped.Add(Blocked(name, kind, blocked));
            return;
        }
        _pending.Add((() => stores.ForEach(s => s()), [gn]));
        _replaced.Add(target);
        _layers.Add(new ConvertedLayer(name, kind, gn.num_channels, gn.num_groups));
    }

    private bool TryFold(Sequential sequential, string prefix, int index, (string name, nn.Module module) norm, (string name, nn.Module module) next)
    {
        if (!IsNorm(norm.module) || Classify(next.module) is not { } classified) return false;
        var (activation, noKernel) = classified;

        var reason = AlreadyActive(norm.module, next.module, activation, null) ?? noKernel;
        if (reason is null && norm.module is TorchSharp.Modules.GroupNorm { weight: null })
            reason = "the norm has no weight (affine: false), so its channel count is unknown and it cannot become our GroupNorm";
        if (reason is null && !_rule.FuseActivations)
            reason = "fuse_activations is off";
        if (reason is null && _places.GetValueOrDefault(norm.module) is var places and > 1)
            reason = $"the norm is held in {places} places, and fusing the activation into it would apply the activation in the others too";
        if (reason is not null)
        {
            NotFused(prefix, norm, next, reason);
            return false;
        }

        var built = FusedReplacement(norm.module, activation);
        if (built.Module is not GroupNorm fused)
        {
            NotFused(prefix, norm, next, $"the norm cannot become our GroupNorm: {built.Reason}");
            return false;
        }

        var identity = nn.Identity();
        identity.train(next.module.training);
        ModuleReplacement.Plan plan;
        Action storeIdentity;
        try
        {
            plan = ModuleReplacement.PlanReplacement(sequential, norm.module, fused);
            storeIdentity = ModuleReplacement.PlanSequentialItem(sequential, index + 1, identity);
        }
        catch
        {
            fused.Dispose();
            identity.Dispose();
            throw;
        }
        if (plan.Blocked.Count > 0)
        {
            fused.Dispose();
            identity.Dispose();
            NotFused(prefix, norm, next, $"the norm cannot be replaced: {BlockedReason(plan.Blocked)}");
            return false;
        }

        _pending.Add((() =>
        {
            plan.Store();
            storeIdentity();
        }, [fused, identity]));
        _decided.Add(norm.module);
        _replaced.Add(norm.module);
        _foldedActivations.Add(next.module);
        _layers.Add(new ConvertedLayer(prefix + norm.name, Replacements.KindOf(norm.module), fused.num_channels, fused.num_groups,
            activation, prefix + next.name));
        return true;
    }

    // In any parent but a plain Sequential, forward decides the order: every norm child and every activation child
    // may be a pair, and none can be folded.
    private void ReportHiddenOrder(nn.Module parent, string prefix, List<(string name, nn.Module module)> children)
    {
        var norms = children.Where(c => IsNorm(c.module)).ToList();
        if (norms.Count == 0) return;
        var activations = children.Select(c => (child: c, classified: Classify(c.module))).Where(a => a.classified is not null).ToList();
        foreach (var norm in norms)
        {
            foreach (var (next, classified) in activations)
            {
                var (activation, noKernel) = classified!.Value;
                var reason = AlreadyActive(norm.module, next.module, activation, parent) ?? noKernel ?? HiddenOrder(parent, next.module, activation);
                NotFused(prefix, norm, next, reason);
            }
        }
    }

    private static string HiddenOrder(nn.Module parent, nn.Module activationModule, Activation activation)
    {
        var type = Replacements.SourceName(parent.GetType());
        var where = parent is Sequential
            ? $"`{type}` overrides Sequential's forward, so the order of its items is not known"
            : IsContainer(parent)
                ? $"they sit in a `{type}`, whose owner's forward calls them, so their order is not visible"
                : $"`{type}`'s forward calls them, so their order is not visible";
        var kind = activationModule.GetType().Name;
        return $"{where}; if forward applies the {kind} right after the norm, fuse by hand: build the norm as our GroupNorm with " +
            $"`activation: Activation.{activation}` and delete that {kind} call (keeping it applies {activation} twice)";
    }

    // A norm that already applies an activation: a second one after it is applied on top, never fused.
    private static string? AlreadyActive(nn.Module norm, nn.Module activationModule, Activation activation, nn.Module? hiddenOrderParent)
    {
        if (norm is not GroupNorm { activation: var own and not Activation.None }) return null;
        var kind = activationModule.GetType().Name;
        if (own != activation)
            return $"the norm already applies {own} (built with `activation: Activation.{own}`); a second activation ({kind}) cannot be fused into it";
        return hiddenOrderParent is null
            ? $"the norm already applies {own} (built with `activation: Activation.{own}`), so the {kind} after it applies {own} twice; remove one of them"
            : $"the norm already applies {own} (built with `activation: Activation.{own}`); if `{Replacements.SourceName(hiddenOrderParent.GetType())}`'s forward " +
              $"calls {kind} after it, {own} is applied twice";
    }

    private void NotFused(string prefix, (string name, nn.Module module) norm, (string name, nn.Module module) next, string reason) =>
        _notFused.Add(new NotFusedPair(prefix + norm.name, Replacements.KindOf(norm.module), prefix + next.name, next.module.GetType().Name, reason));

    // The norms a converter can fold: its own layers, ours without an activation, and TorchSharp's GroupNorm.
    private bool IsNorm(nn.Module module) => _rule.IsTarget(module) || module is GroupNorm or TorchSharp.Modules.GroupNorm;

    private Replacements.Built FusedReplacement(nn.Module norm, Activation activation) => norm switch
    {
        _ when _rule.IsTarget(norm) => _rule.Create(norm, activation),
        GroupNorm ours => Replacements.FromOurs(ours, activation),
        TorchSharp.Modules.GroupNorm theirs => Replacements.FromTheirs(theirs, activation),
        _ => throw new InvalidOperationException($"{norm.GetType().Name} is not a norm layer."),
    };

    // For an activation module: the activation GroupNorm fuses for it, or None and the reason there is no fused kernel.
    // Null for a module that is no activation.
    private static (Activation activation, string? noKernel)? Classify(nn.Module module) => module switch
    {
        SiLU => (Activation.SiLU, null),
        ReLU => (Activation.ReLU, null),
        GELU { approximate: GELU.Approximate.none } => (Activation.GELU, null),
        GELU gelu => (Activation.None, $"GELU with approximate={gelu.approximate} has no fused kernel (GroupNorm fuses the exact GELU only)"),
        _ when Unfusable.Contains(module.GetType()) => (Activation.None, $"GroupNorm has no fused kernel for {module.GetType().Name} ({Fusable})"),
        _ => null,
    };

    private static bool IsContainer(nn.Module module) =>
        ModuleReplacement.GenericBase(module.GetType(), typeof(ModuleList<>)) is not null
        || ModuleReplacement.GenericBase(module.GetType(), typeof(ModuleDict<>)) is not null;

    // A subclass that overrides forward decides itself how its items combine, so adjacency means nothing there.
    private static Sequential? AsPlainSequential(nn.Module module) =>
        module is Sequential sequential
        && sequential.GetType().GetMethod(nameof(Sequential.forward), [typeof(Tensor)])?.DeclaringType == typeof(Sequential)
            ? sequential
            : null;

    // ---------------------------------------------------------------- blocked places: reason and source change

    private NotSwappedLayer Blocked(string name, string kind, List<ModuleReplacement.BlockedPlace> blocked)
    {
        var described = blocked.Select(Describe).Distinct().ToList();
        return new NotSwappedLayer(name, kind,
            string.Join("; ", described.Select(d => d.reason)),
            string.Join(", ", described.Select(d => d.member)),
            string.Join("; ", described.Select(d => d.change)));
    }

    private string BlockedReason(IReadOnlyList<ModuleReplacement.BlockedPlace> blocked) =>
        string.Join("; ", blocked.Select(Describe).Distinct().Select(d => $"{d.reason} ({d.change})"));

    private (string member, string reason, string change) Describe(ModuleReplacement.BlockedPlace place)
    {
        const string Wide = "Module<Tensor, Tensor>";
        var member = place.Member;
        var declared = place.Declared;
        var verb = "declare";
        if (place.Container is nn.Module container)
        {
            // The container's item type is fixed when it is built; the field that holds it names it in the source.
            var holding = _holders.GetValueOrDefault(container)?
                .Select(h => ModuleReplacement.FieldHolding(h, container))
                .FirstOrDefault(f => f is not null);
            member = holding?.member ?? _paths.GetValueOrDefault(container) ?? container.GetName();
            if (holding?.declared is Type fieldType && fieldType.IsGenericType && fieldType.GetGenericArguments().Contains(place.Narrow)) declared = fieldType;
            verb = "declare and build";
        }

        var narrow = Replacements.SourceName(place.Narrow);
        var reason = declared == place.Narrow
            ? $"`{member}` is declared as `{narrow}`, which cannot hold a `{Replacements.OursName}`"
            : $"`{member}` is a `{Replacements.SourceName(declared)}`, whose items cannot be a `{Replacements.OursName}`";
        var change = $"{verb} `{member}` as `{Replacements.SourceName(declared, place.Narrow, Wide)}` " +
            $"(or `{Replacements.SourceName(declared, place.Narrow, Replacements.OursName)}`)";
        return (member!, reason, change);
    }

    private string BlockedMessage()
    {
        var lines = _notSwapped.Select(n => $"{n.name} ({n.kind}): {n.reason}; to allow it, {n.source_change}.");
        return "Some layers cannot be replaced, so nothing in the model was changed. " + string.Join(" ", lines);
    }

    // ---------------------------------------------------------------- phase 3: store, then dispose

    private void Commit()
    {
        for (int i = 0; i < _pending.Count; i++)
        {
            try
            {
                _pending[i].store();
            }
            catch
            {
                for (int j = i; j < _pending.Count; j++)
                {
                    foreach (var module in _pending[j].created) module.Dispose();
                }
                throw;
            }
        }
    }

    private void DisposeReplaced(nn.Module root)
    {
        foreach (var old in _replaced) old.Dispose();
        if (_foldedActivations.Count == 0) return;
        // An activation module may also sit in places that were not folded; those keep it alive.
        var live = new HashSet<nn.Module>(root.modules(), ReferenceEqualityComparer.Instance) { root };
        foreach (var activation in _foldedActivations.Distinct(ReferenceEqualityComparer.Instance).Cast<nn.Module>())
        {
            if (!live.Contains(activation)) activation.Dispose();
        }
    }
}
