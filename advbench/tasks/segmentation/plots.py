"""adversarial_examples.png for segmentation: image, true mask, clean and adversarial predictions, perturbation."""
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from advbench.evaluation.plots import FONT, figure, perturbations, plt, save_figure
from advbench.tasks.segmentation.metrics import IGNORE


def _colours(n: int):
    base = plt.get_cmap("tab20")(np.linspace(0, 1, 20))
    colours = np.vstack([[0, 0, 0, 1], base[:max(n - 1, 0)]])  # class 0 (background) black
    return ListedColormap(np.vstack([colours, [[1, 1, 1, 1]]]))  # the last: IGNORE, white


def plot_segmentations(x, x_adv, masks, clean_pred, adv_pred, classes: list, path, title: str = "") -> None:
    """One row per image; masks drawn in one palette with a legend of the class names that appear (below the
    images); the perturbations amplified on one scale ("no perturbation" where nothing moved)."""
    n, k = len(x), len(classes)
    cmap = _colours(k)
    shown = lambda m: np.where(m.cpu().numpy() == IGNORE, k, m.cpu().numpy())  # noqa: E731
    fig, axes = figure(n, 5, figsize=(11, 2.2 * n + 0.8), squeeze=False)
    amplified, titles = perturbations((x_adv - x).cpu())
    for i in range(n):
        panels = [(x[i].cpu(), "image", None), (shown(masks[i]), "true mask", cmap),
                  (shown(clean_pred[i]), "clean prediction", cmap), (shown(adv_pred[i]), "adversarial prediction",
                                                                      cmap),
                  (amplified[i], titles[i], None)]
        for ax, (image, name, colours) in zip(axes[i], panels):
            if colours is None:
                image = image.permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy()
                ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(image, cmap=colours, vmin=0, vmax=k, interpolation="nearest")
            ax.set_title(name, fontsize=7)
            ax.axis("off")
    present = sorted({int(v) for m in (masks, clean_pred, adv_pred) for v in m.unique().tolist() if v != IGNORE})
    handles = [Patch(color=cmap(c), label=classes[c]) for c in present if c < k]
    if any((m == IGNORE).any() for m in masks):
        handles.append(Patch(facecolor="white", edgecolor="grey", label="ignored (not scored)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)) or 1, fontsize=FONT,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
