"""Numbers as the logs print them (accuracies as percentages, throughput with thousands separators), and metric keys
as the figures label them."""

RATES = ("_acc", "_map", "_map50", "_miou", "_recall", "_rate")


def number(key: str, value) -> str:
    """``value`` of metric ``key`` for a log line: 69.19%, 16,270 img/s, 3.0 s, 0.4137."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    if key.endswith(RATES) or key in ("clean_acc", "robust_acc"):
        return f"{100 * value:.2f}%"
    if key == "images_per_s":
        return f"{value:,.0f} img/s"
    if key == "seconds":  # two significant digits below a second: a quick attack is 0.07 s, not 0.0 s
        return f"{value:.2g} s" if abs(value) < 1 else f"{value:.1f} s"
    if key == "lr":
        return f"{value:.3g}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def row(values: dict) -> str:
    """A metrics row as ``key value, ...`` (numbers only)."""
    return ", ".join(f"{k} {number(k, v)}" for k, v in values.items() if isinstance(v, (int, float)))


# Figure labels: a metric key's parts, read left to right (val_robust_map50 -> validation, robust, mAP@0.5).
STAGES = {"train": "training", "val": "validation", "clean": "clean", "robust": "robust", "adv": "adversarial"}
NAMES = {"acc": "accuracy", "map50": "mAP@0.5", "map": "mAP@0.5:0.95", "miou": "mIoU", "macro_f1": "macro F1",
         "f1": "F1", "pck": "PCK", "lr": "learning rate", "eps": "eps", "loss": "loss"}


def capital(text: str) -> str:
    """``text`` with a capital first letter, but mAP and mIoU keep their lower-case m."""
    return text if len(text) > 1 and text[1].isupper() else text[:1].upper() + text[1:]


def metric_name(key: str) -> str:
    """The measure of a metric key, without its stage: robust_map50 -> 'mAP@0.5', clean_acc -> 'accuracy'."""
    parts = key.split("_")
    while len(parts) > 1 and parts[0] in STAGES:
        parts = parts[1:]
    for n in range(len(parts), 0, -1):  # the longest known name first (macro_f1), then what follows it as words
        head = "_".join(parts[:n])
        if head in NAMES:
            return " ".join([NAMES[head], *parts[n:]])
    return " ".join(parts)


def label(key: str, percent: bool = True) -> str:
    """A metric key as a figure labels it: clean_acc -> 'Clean accuracy (%)', robust_map50 -> 'Robust mAP@0.5
    (%)', val_robust_miou -> 'Validation robust mIoU (%)'; ``percent=False`` drops the unit."""
    parts, stages = key.split("_"), []
    while len(parts) > 1 and parts[0] in STAGES:
        stages.append(STAGES[parts.pop(0)])
    text = capital(" ".join([*stages, metric_name(key)]))
    return f"{text} (%)" if percent else text
