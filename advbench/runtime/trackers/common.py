"""What every tracker shares: the config flattened into hyperparameters, the numbers that are metrics, the figures."""
import importlib
from pathlib import Path

from advbench.errors import AdvbenchError, interruption

# results.json sections that say what ran, not what it measured: settings (the config holds them, as hyperparameters),
# never metrics, so that seed, threads or an attack's steps do not become a metric's curve.
SETTINGS = ("attacks", "eps", "seed", "threads", "world_size", "device", "versions", "choices", "labels", "classes",
            "metric_names", "evaluation", "job", "checkpoint", "task", "cascade")
FIGURES = "*.png"  # robustness_curve.png, curves.png, adversarial_examples.png, ...: whichever the run drew
FILES = ("results.json", "results.csv", "summary.md", "metrics.jsonl", "config_resolved.yaml")


def flat(tree, prefix: str = "") -> dict:
    """A nested dict as {"a.b.c": value}; lists stay lists."""
    out = {}
    for key, value in (tree or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flat(value, f"{name}.")
        else:
            out[name] = value
    return out


def numbers(tree) -> dict:
    """The finite numbers of a (nested) dict, flattened; booleans and None left out."""
    return {k: float(v) for k, v in flat(tree).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")}


def scalars(config: dict) -> dict:
    """The config flattened into hyperparameters a tracker's table takes: numbers, strings and booleans as they are,
    anything else (lists, None) as its text."""
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat(config).items()}


def epoch_metrics(row: dict) -> dict:
    """One metrics.jsonl row's metrics: its numbers but the epoch, which is their step."""
    return {k: v for k, v in numbers(row).items() if k != "epoch"}


def final_metrics(results: dict) -> dict:
    """The numbers results.json measured (accuracies, per attack, sanity, training's outcome, wall time), flattened;
    its settings left out."""
    return numbers({k: v for k, v in results.items() if k not in SETTINGS})


def figures(out: Path) -> list:
    """The figures the run drew, in name order."""
    return sorted(out.glob(FIGURES))


def files(out: Path) -> list:
    """The figures and the result files the run wrote, those that exist."""
    return figures(out) + [out / name for name in FILES if (out / name).is_file()]


def outcome(failed: BaseException | None) -> str:
    """How a run ended: finished, interrupted (resumable: SIGINT, SIGTERM, stop_after_epoch) or failed."""
    if failed is None:
        return "finished"
    return "interrupted" if isinstance(failed, KeyboardInterrupt) or interruption(failed) else "failed"


def require(module: str, tracker: str, package: str):
    """``module`` imported, or a one-line error naming the extra that installs ``package``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise AdvbenchError(f"logger={tracker} needs the {package} package: pip install "
                            f"'advbench[{tracker}]'") from None


def group(key: str) -> str:
    """TensorBoard's and wandb's panel for a metrics.jsonl column: val/..., train/..."""
    for prefix in ("val_", "train_"):
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix):]}"
    return f"train/{key}"
