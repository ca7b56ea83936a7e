"""PNG figures: the robustness curve and a grid of clean / adversarial / perturbation images."""
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


def plot_robustness_curve(rows: list, attacks: list, metrics: tuple, path) -> None:
    """The task's metric against eps: clean, one line per attack, and the per-example worst case."""
    clean_key, robust_key = metrics
    fig, ax = plt.subplots(figsize=(6, 4))
    eps = [r["eps_value"] for r in rows]
    ax.plot(eps, [r[clean_key] for r in rows], "k--", label="clean")
    for name in attacks:
        ax.plot(eps, [r[name] for r in rows], marker="o", label=name)
    if len(attacks) > 1:
        ax.plot(eps, [r[robust_key] for r in rows], "k", marker="s", label="worst case")
    ax.set(xlabel="eps", ylabel=robust_key.removeprefix("robust_"), ylim=(0, 1.02), title="robustness curve")
    ax.set_xticks(eps, [r["eps"] for r in rows], rotation=45)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_examples(x, x_adv, y, pred, pred_adv, path) -> None:
    """Rows: clean image, adversarial image, perturbation amplified to the full range; labels above each."""
    n = len(x)
    fig, axes = plt.subplots(3, n, figsize=(1.4 * n, 4.6), squeeze=False)
    delta = x_adv - x
    scale = delta.abs().amax().clamp_min(1e-12)
    for i in range(n):
        rows = [(x[i], f"y={y[i]} pred={pred[i]}"), (x_adv[i], f"adv pred={pred_adv[i]}"),
                (0.5 + 0.5 * delta[i] / scale, f"x{1 / (2 * scale.item()):.0f} delta")]
        for ax, (image, title) in zip(axes[:, i], rows):
            image = image.permute(1, 2, 0).clamp(0, 1).numpy()
            ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=7, color="red" if "adv" in title and pred_adv[i] != y[i] else "black")
            ax.axis("off")
    save_figure(fig, path)
