"""summary.md: an evaluation as the field reads it (percentages with the number of examples, eps as given, norm,
preset and version, each attack's settings with its step size, sanity warnings), beside results.json."""
from advbench.runtime.outputs import atomic_write

SETTINGS = ("norm", "eps", "alpha", "steps", "restarts", "random_start", "targeted", "loss", "n_targets", "terms",
            "goal", "descend", "eot")
# Kinds whose loop takes no fixed step: APGD adapts its own (from 2 eps, halving on stalls); FAB, Square and the
# reference AutoAttack ignore alpha. Every other kind runs the PGD loop, which steps by alpha.
NO_FIXED_STEP = {"apgd": "adaptive (from 2 eps)", "fab": "-", "square": "-", "autoattack_reference": "-"}


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _step(settings: dict) -> str:
    """The attack's step size: alpha, and what fraction of eps it is, where its loop takes a fixed step."""
    if settings.get("name") in NO_FIXED_STEP:
        return NO_FIXED_STEP[settings["name"]]
    alpha, eps = settings.get("alpha"), settings.get("eps")
    if not isinstance(alpha, (int, float)):
        return "" if alpha is None else str(alpha)
    return f"{alpha:.4g} ({alpha / eps:.3g} eps)" if isinstance(eps, (int, float)) and eps > 0 else f"{alpha:.4g}"


def _macro_f1(results: dict) -> list:
    """The macro F1 line of a task that reports it (text), else nothing."""
    if "clean_macro_f1" not in results:
        return []
    robust = results.get("robust_macro_f1")
    return [f"- macro F1: robust {'n/a' if robust is None else f'{robust:.4f}'} (each example at its worst case), "
            f"clean {results['clean_macro_f1']:.4f}"]


def summary_markdown(results: dict) -> str:
    """The evaluation of ``results`` (results.json's content) as Markdown."""
    names = results.get("metric_names") or {"clean": "clean_acc", "robust": "robust_acc"}
    clean, robust = names["clean"], names["robust"]
    evaluation = results.get("evaluation") or {}
    preset = evaluation.get("preset") or "custom"
    version = f" ({evaluation['version']})" if evaluation.get("version") else ""
    attacks = results.get("attacks") or {}
    norms = sorted({a["norm"] for a in attacks.values()}) or ["-"]
    n = results.get("n_examples")
    lines = [
        f"# advbench evaluation: {results.get('labels', {}).get('model', '')} on "
        f"{results.get('labels', {}).get('dataset', '')}", "",
        f"- **{robust.replace('_', ' ')}: {_pct(results.get(robust))}** (worst case per example over all attacks), "
        f"{clean.replace('_', ' ')}: {_pct(results.get(clean))}, on {n} test examples",
        f"- eps = {results.get('eps', {}).get('given')} ({', '.join(norms)}), evaluation `{preset}`{version}, "
        f"cascade: {results.get('cascade')}",
        *_macro_f1(results),
        f"- seed {results.get('seed')}, device {results.get('device')}, advbench "
        f"{results.get('versions', {}).get('advbench')}, torch {results.get('versions', {}).get('torch')}", "",
        "| attack | " + robust.replace("_", " ") + " after it | " + " | ".join(SETTINGS) + " |",
        "|" + " --- |" * (2 + len(SETTINGS)),
    ]
    by_attack = results.get(f"{robust}_by_attack") or {}
    for name, settings in attacks.items():
        values = [_step(settings) if k == "alpha" else str(settings.get(k, "")) for k in SETTINGS]
        lines.append(f"| {name} | {_pct(by_attack.get(name))} | " + " | ".join(values) + " |")
    warnings = (results.get("sanity") or {}).get("warnings") or []
    lines += ["", "## Sanity checks", ""] + ([f"- warning: {w}" for w in warnings] or ["- no warnings"])
    return "\n".join(lines) + "\n"


def write_summary(results: dict, path) -> None:
    """Write summary.md for ``results``."""
    atomic_write(path, lambda f: f.write(summary_markdown(results).encode()))
