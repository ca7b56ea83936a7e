"""PNG figures every task draws (the robustness curve, the training curves) and what every figure shares: its dpi,
``save_figure``, a sweep's x axis (values as given, log where they span decades, no overlapping ticks), legends
outside the data, and the amplified perturbation panel of the example grids."""
import io
import math

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402

from advbench.runtime.outputs import atomic_write  # noqa: E402
from advbench.runtime.readable import capital, label, metric_name  # noqa: E402

DPI = 150  # every figure, for print
FONT = 8  # legends and small titles
TINY = 1e-6  # a perturbation below this moved nothing: float noise, far below one 8-bit step (1/255)
MAX_TICKS = 12  # a sweep with more values (none a fraction) gets matplotlib's own ticks


def figure(*grid, **kwargs):
    """``plt.subplots`` with constrained layout, so that legends and colorbars outside the axes get room."""
    return plt.subplots(*grid, layout="constrained", **kwargs)


def save_figure(fig, path) -> None:
    """Write ``fig`` as a PNG (``DPI``), atomically, and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def spans_decades(values) -> bool:
    """Whether an axis of ``values`` wants a log scale: all positive, the largest over ten times the smallest."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    return bool(values) and min(values) > 0 and max(values) > 10 * min(values)


def sweep_axis(ax, values: list, texts: list, keep=None) -> None:
    """The x axis of a sweep: log where ``values`` span decades; ticks at the values themselves, labelled as given
    (``texts``: 8/255 stays 8/255), rotated and thinned so that no two overlap (``keep``'s label and the ends kept
    first); matplotlib's own ticks for over MAX_TICKS values none of which was given as a fraction."""
    if spans_decades(values):
        ax.set_xscale("log")
    shown = dict(sorted(zip(values, map(str, texts))))  # one label per distinct value
    if len(shown) > MAX_TICKS and not any("/" in t for t in shown.values()):
        return
    ax.set_xticks(list(shown), list(shown.values()))
    ax.xaxis.set_minor_formatter(NullFormatter())
    untangle_ticks(ax, [keep, max(shown), min(shown)])


def _tick_positions(ax, labels) -> list:
    return [ax.transData.transform((t.get_position()[0], 0))[0] for t in labels]


def untangle_ticks(ax, first=()) -> None:
    """Rotate the x tick labels 45 degrees where two would touch, and hide those that still would (the labels of
    the x values in ``first`` are kept first, then left to right)."""
    fig = ax.figure
    fig.canvas.draw()  # positions and sizes come from a drawn layout
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    boxes = [t.get_window_extent(renderer) for t in labels]
    if all(a.x1 + 2 <= b.x0 for a, b in zip(boxes, boxes[1:])):
        return
    height = max(b.height for b in boxes)
    plt.setp(labels, rotation=45, ha="right", rotation_mode="anchor")
    fig.canvas.draw()  # the rotated labels' room may narrow the axes
    xs = _tick_positions(ax, labels)
    # Rotated labels are parallel strips: apart when their anchors are sqrt(2) text heights apart along x.
    order = sorted(range(len(labels)), key=lambda i: (labels[i].get_position()[0] not in first, i))
    kept = []
    for i in order:
        if all(abs(xs[i] - xs[j]) >= math.sqrt(2) * height + 2 for j in kept):
            kept.append(i)
    for i, text in enumerate(labels):
        text.set_visible(i in kept)


def legend_below(fig, ax, ncol: int = 3) -> None:
    """The legend of ``ax`` below the axes, inside the figure, never over the data."""
    handles, names = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside lower center", ncol=min(ncol, len(handles)), fontsize=FONT,
                   frameon=False)


def legend_right(ax) -> None:
    """The legend of ``ax`` to its right (constrained layout makes room), never over the data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=FONT, frameon=False)


def percent_limits(ax, values) -> None:
    """A percentage axis from 0 to a little above its largest value (at most 100)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    ax.set_ylim(0.0, min(100.0, max(10.0, max(values, default=100.0) * 1.08 + 2)))


def percent(values) -> list:
    """Fractions as percentages (None stays None: a number the run did not measure)."""
    return [None if v is None else 100 * v for v in values]


def perturbations(delta) -> tuple:
    """The example grids' perturbation panels: ``delta`` (N, C, H, W) amplified on one scale shared by the whole
    grid, around grey, and each panel's title: its amplification, or "no perturbation" where nothing moved (an
    example never attacked, or an attack that changed nothing)."""
    top = delta.abs().amax().item()
    shown = 0.5 + 0.5 * delta / max(top, TINY)
    factor = 0.5 / top if top >= TINY else 0.0
    amount = f"{factor:.0f}" if factor >= 10 else f"{factor:.2g}"
    titles = [f"perturbation ×{amount}" if d.abs().amax().item() >= TINY else "no perturbation" for d in delta]
    return shown, titles


def plot_robustness_curve(rows: list, attacks: list, metrics: tuple, path, cascade: bool = True,
                          run_eps: float | None = None, subject: str = "") -> None:
    """The task's metric against eps: clean, one line per attack (cumulative under the cascade: after it and the
    attacks before it; else on its own), the per-example worst case in bold, the run's own eps marked."""
    clean_key, robust_key = metrics
    fig, ax = figure(figsize=(6.5, 4.6))
    eps = [r["eps_value"] for r in rows]
    ax.plot(eps, percent(r[clean_key] for r in rows), color="grey", ls=":", lw=1.5, label="clean")
    markers = "ovD^<>p*"
    for i, name in enumerate(attacks):
        ax.plot(eps, percent(r[name] for r in rows), marker=markers[i % len(markers)], ls="--", lw=1, ms=5,
                label=f"{name} ({'cumulative' if cascade else 'on its own'})")
    ax.plot(eps, percent(r[robust_key] for r in rows), "k", lw=2.5, marker="s",
            label="worst case over the attacks (reported)")
    if run_eps is not None and run_eps in eps:
        ax.axvline(run_eps, color="k", lw=0.8, alpha=0.4, label="the run's eps")
    values = [v for r in rows for k, v in r.items() if k not in ("eps", "eps_value") and isinstance(v, float)]
    percent_limits(ax, percent(values))
    ax.set(xlabel="eps (attack budget, as given)", ylabel=f"{capital(metric_name(robust_key))} (%)",
           title=f"{label(robust_key, percent=False)} against eps" + (f"\n{subject}" if subject else ""))
    ax.grid(alpha=0.3)
    legend_below(fig, ax, ncol=2)
    sweep_axis(ax, eps, [r["eps"] for r in rows], keep=run_eps)
    save_figure(fig, path)


def plot_curves(rows: list, metrics: tuple, path) -> None:
    """curves.png: the training loss (and each loss term) and the clean and robust validation numbers per epoch."""
    epochs = [r["epoch"] for r in rows]
    fig, (left, right) = figure(1, 2, figsize=(11, 3.8))
    losses = [k for k in rows[-1] if k.startswith("train_") and not k.endswith("_acc")]
    for key in losses:
        left.plot(epochs, [r.get(key) for r in rows], marker="o",
                  label="total" if key == "train_loss" else key.removeprefix("train_"))
    left.set(xlabel="Epoch", ylabel="Training loss", title="Training loss" + (" by term" if len(losses) > 1 else ""))
    clean, robust = metrics
    drawn, names = [], []
    for key, style in ((f"train_{clean}", ":"), ("train_adv_acc", ":"), (f"val_{clean}", "-"),
                       (f"val_{robust}", "-")):
        values = percent(r.get(key) for r in rows)
        if any(v is not None for v in values):
            right.plot(epochs, values, style, marker="o", label=label(key, percent=False))
            drawn += values
            names.append(metric_name(key))
    measure = ", ".join(dict.fromkeys(names)) or metric_name(robust)
    right.set(xlabel="Epoch", ylabel=f"{capital(measure)} (%)",
              title=f"{capital(measure)} per epoch")
    percent_limits(right, drawn)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if len(set(epochs)) == 1:
            ax.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
    if len(losses) > 1:
        legend_right(left)
    legend_right(right)
    save_figure(fig, path)
