"""PNG figures every task draws: the robustness curve and the training curves; ``save_figure`` for all."""
import io

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from advbench.runtime.outputs import atomic_write  # noqa: E402


def save_figure(fig, path) -> None:
    """Write ``fig`` as a PNG, atomically, and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def plot_robustness_curve(rows: list, attacks: list, metrics: tuple, path, cascade: bool = True,
                          run_eps: float | None = None) -> None:
    """The task's metric against eps: clean, one line per attack (cumulative under the cascade: after it and the
    attacks before it; else on its own), the per-example worst case in bold, the run's own eps marked."""
    clean_key, robust_key = metrics
    metric = robust_key.removeprefix("robust_").replace("_", " ")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    eps = [r["eps_value"] for r in rows]
    ax.plot(eps, [r[clean_key] for r in rows], color="grey", ls=":", lw=1.5, label="clean")
    markers = "ovD^<>p*"
    for i, name in enumerate(attacks):
        ax.plot(eps, [r[name] for r in rows], marker=markers[i % len(markers)], ls="--", lw=1, ms=5,
                label=f"{name} ({'cumulative' if cascade else 'on its own'})")
    ax.plot(eps, [r[robust_key] for r in rows], "k", lw=2.5, marker="s", label="worst case (reported)")
    if run_eps is not None and run_eps in eps:
        ax.axvline(run_eps, color="k", lw=0.8, alpha=0.4)
    values = [v for r in rows for k, v in r.items() if k not in ("eps", "eps_value") and isinstance(v, float)]
    top = min(1.0, max(values, default=1.0) * 1.08 + 0.02)
    ax.set(xlabel="eps (as given)", ylabel=metric, ylim=(0, top), title=f"{metric} under attack against eps")
    ax.set_xticks(eps, [r["eps"] for r in rows], rotation=30 if len(eps) > 4 else 0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    save_figure(fig, path)


def plot_curves(rows: list, metrics: tuple, path) -> None:
    """curves.png: the training loss (and each loss term) and the clean and robust validation numbers per epoch."""
    epochs = [r["epoch"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    losses = [k for k in rows[-1] if k.startswith("train_") and not k.endswith("_acc")]
    for key in losses:
        left.plot(epochs, [r.get(key) for r in rows], marker="o", label=key.removeprefix("train_"))
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    left.legend(fontsize=8)
    clean, robust = metrics
    for key, style in ((f"train_{clean}", ":"), ("train_adv_acc", ":"), (f"val_{clean}", "-"),
                       (f"val_{robust}", "-")):
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            right.plot(epochs, [None if v is None else 100 * v for v in values], style, marker="o",
                       label=key.replace("_", " "))
    right.set(xlabel="epoch", ylabel="%", title="accuracy (validation: solid)")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    save_figure(fig, path)
