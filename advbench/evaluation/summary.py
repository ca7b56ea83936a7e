"""summary.md: an evaluation as the field reads it (percentages with the number of examples, eps as given, norm,
preset and version or what ran in its place, each attack's settings with its step size, how the task's numbers are
computed, sanity warnings), beside results.json."""
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


def _evaluation(evaluation: dict) -> str:
    """The evaluation as it ran: the preset (and version), or, where the task skipped its attacks, what ran and
    why."""
    preset = evaluation.get("preset") or "custom"
    version = f" ({evaluation['version']})" if evaluation.get("version") else ""
    skipped = evaluation.get("preset_skipped")
    if not skipped:
        return f"evaluation `{preset}`{version}"
    ran = ", ".join(f"`{name}`" for name in evaluation.get("ran") or []) or "no attack"
    return f"evaluation: {ran} (preset `{preset}` skipped: {skipped['why']})"


def _definitions(results: dict) -> list:
    """The lines saying how the task's numbers are computed (results.json's metric_definitions), if any."""
    definitions = results.get("metric_definitions") or {}
    thresholds = {k: v for k, v in definitions.items() if not isinstance(v, str)}
    lines = [f"- `{key}`: {text}" for key, text in definitions.items() if isinstance(text, str)]
    if thresholds:
        lines.append("- thresholds: " + ", ".join(f"`eval.{k}` = {v}" for k, v in thresholds.items()))
    extra = [f"- {key.replace('_', ' ')}: {_pct(results.get(key))}" for key in (
        "clean_miou_no_background", "robust_miou_no_background") if key in results]
    return ["", "## How the numbers are computed", "", *extra, *lines] if lines or extra else []


def summary_markdown(results: dict) -> str:
    """The evaluation of ``results`` (results.json's content) as Markdown."""
    names = results.get("metric_names") or {"clean": "clean_acc", "robust": "robust_acc"}
    clean, robust = names["clean"], names["robust"]
    evaluation = results.get("evaluation") or {}
    attacks = results.get("attacks") or {}
    how = ("defined below" if robust in (results.get("metric_definitions") or {})
           else "worst case per example over all attacks")
    norms = sorted({a["norm"] for a in attacks.values()}) or ["-"]
    n = results.get("n_examples")
    lines = [
        f"# advbench evaluation: {results.get('labels', {}).get('model', '')} on "
        f"{results.get('labels', {}).get('dataset', '')}", "",
        f"- **{robust.replace('_', ' ')}: {_pct(results.get(robust))}** ({how}), "
        f"{clean.replace('_', ' ')}: {_pct(results.get(clean))}, on {n} test examples",
        f"- eps = {results.get('eps', {}).get('given')} ({', '.join(norms)}), {_evaluation(evaluation)}, "
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
    lines += _definitions(results)
    warnings = (results.get("sanity") or {}).get("warnings") or []
    lines += ["", "## Sanity checks", ""] + ([f"- warning: {w}" for w in warnings] or ["- no warnings"])
    return "\n".join(lines) + "\n"


def write_summary(results: dict, path) -> None:
    """Write summary.md for ``results``."""
    atomic_write(path, lambda f: f.write(summary_markdown(results).encode()))
