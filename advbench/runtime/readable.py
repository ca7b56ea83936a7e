"""Numbers as the logs print them: accuracies as percentages, throughput with thousands separators."""

RATES = ("_acc", "_map", "_map50", "_miou", "_recall", "_rate")


def number(key: str, value) -> str:
    """``value`` of metric ``key`` for a log line: 69.19%, 16,270 img/s, 3.0 s, 0.4137."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    if key.endswith(RATES) or key in ("clean_acc", "robust_acc"):
        return f"{100 * value:.2f}%"
    if key == "images_per_s":
        return f"{value:,.0f} img/s"
    if key == "seconds":
        return f"{value:.1f} s"
    if key == "lr":
        return f"{value:.3g}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def row(values: dict) -> str:
    """A metrics row as ``key value, ...`` (numbers only)."""
    return ", ".join(f"{k} {number(k, v)}" for k, v in values.items() if isinstance(v, (int, float)))
