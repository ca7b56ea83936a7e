"""Detection figures: clean and adversarial images with true and predicted boxes; the input gradient of each loss
term side by side on one colour scale, and each term's Grad-CAM (saliency.method=gradcam)."""
import logging

import torch
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from advbench.data.loaders import to_unit
from advbench.errors import AdvbenchError
from advbench.evaluation.gradcam import gradcam_maps
from advbench.evaluation.plots import FONT, figure, perturbations, plt, save_figure
from advbench.evaluation.saliency import input_gradient
from advbench.tasks.detection.metrics import confident

log = logging.getLogger(__name__)


def _image(ax, x: torch.Tensor) -> None:
    image = x.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy()
    ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
    ax.axis("off")


def _boxes(ax, boxes, labels, classes, colour, scores=None) -> None:
    for i, (x1, y1, x2, y2) in enumerate(boxes.detach().cpu().tolist()):
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color=colour, lw=1))
        text = classes[int(labels[i])] + (f" {scores[i]:.2f}" if scores is not None else "")
        ax.text(x1, y1 - 1, text, color=colour, fontsize=5, va="bottom")


def plot_detections(x, x_adv, targets, clean, adv, classes, score: float, path, title: str = "") -> None:
    """Rows: the image with its true boxes (green) and clean predictions (yellow); the adversarial image with its
    predictions (red); the perturbation amplified on one scale ("no perturbation" where nothing moved). Predictions
    scoring below ``score`` are not drawn; a legend below names the colours."""
    n = len(x)
    fig, axes = figure(3, n, figsize=(max(1.8 * n + 0.4, 3.0), 6.0), squeeze=False)
    amplified, titles = perturbations((x_adv - x).detach().cpu())
    for i in range(n):
        c, a = confident(clean[i], score), confident(adv[i], score)
        _image(axes[0, i], x[i])
        _boxes(axes[0, i], targets[i]["boxes"], targets[i]["labels"], classes, "lime")
        _boxes(axes[0, i], c["boxes"], c["labels"], classes, "yellow", c["scores"].tolist())
        axes[0, i].set_title(f"{len(targets[i]['labels'])} true, {len(c['labels'])} found", fontsize=7)
        _image(axes[1, i], x_adv[i])
        _boxes(axes[1, i], a["boxes"], a["labels"], classes, "red", a["scores"].tolist())
        axes[1, i].set_title(f"adversarial: {len(a['labels'])} found", fontsize=7)
        _image(axes[2, i], amplified[i])
        axes[2, i].set_title(titles[i], fontsize=7)
    fig.legend(handles=[Line2D([], [], color=colour, lw=2, label=text) for colour, text in (
        ("lime", "true box"), ("yellow", "clean prediction"), ("red", "adversarial prediction"))],
        loc="outside lower center", ncol=3 if n > 2 else 1, fontsize=FONT, frameon=False, title_fontsize=FONT,
        title=f"predictions scoring ≥ {score:g}")
    if title:
        fig.suptitle(title, fontsize=FONT + 2)
    save_figure(fig, path)


def write_term_saliency(model, test: tuple, attack, task, settings, device, out) -> tuple:
    """saliency.png: per test image a row: the image, |d term / dx| of each loss term and of their sum, all on one
    colour scale (with a colorbar) so their sizes compare, with saliency.method=gradcam each term's Grad-CAM over
    the image (one scale of their own), and the adversarial example. ``settings``: the saliency config. Returns
    the files and each map's mean (|gradient|, Grad-CAM)."""
    x = to_unit(test[0][:settings.n_examples]).to(device)
    targets = task.to(test[1][:settings.n_examples], device)
    weights = {name: {name: 1.0} for name in task.terms}
    grads, objectives = {}, {}
    for name, weight in [*weights.items(), ("total", None)]:
        objective = task.objective(weights=weight)
        loss_fn = lambda out, f=objective: f(out, targets)  # noqa: E731
        try:
            grads[name] = input_gradient(model, x, loss_fn)
            objectives[name] = loss_fn
        except AdvbenchError as err:  # a detector without this term (SSD has no objectness)
            log.info("saliency: no %s map (%s)", name, " ".join(str(err).split())[:120])
    cams = gradcam_maps(model, x, {name: fn for name, fn in objectives.items() if name != "total"}, settings)
    x_adv = attack(model, x, targets)
    heat = {name: g.abs().amax(1) for name, g in grads.items()}  # (N, H, W): largest over channels
    top = max(h.max().item() for h in heat.values()) or 1.0
    cam_top = max((c.max().item() for c in cams.values()), default=0.0) or 1.0
    columns = 2 + len(heat) + len(cams)
    fig, axes = plt.subplots(len(x), columns, figsize=(2.1 * columns, 2.1 * len(x) + 0.4), squeeze=False)
    for i in range(len(x)):
        _image(axes[i, 0], x[i])
        _boxes(axes[i, 0], targets[i]["boxes"], targets[i]["labels"], task.classes, "lime")
        for j, (name, h) in enumerate(heat.items(), start=1):
            shown = axes[i, j].imshow(h[i].cpu().numpy(), cmap="inferno", vmin=0, vmax=top)
            axes[i, j].set_title(f"|d {name} / dx|", fontsize=7)
            axes[i, j].axis("off")
        for j, (name, cam) in enumerate(cams.items(), start=1 + len(heat)):
            _image(axes[i, j], x[i])
            cam_shown = axes[i, j].imshow(cam[i].cpu().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=cam_top)
            axes[i, j].set_title(f"Grad-CAM {name}", fontsize=7)
        _image(axes[i, -1], x_adv[i])
        axes[i, -1].set_title(f"adversarial ({attack.name})", fontsize=7)
    gradient_axes = axes[:, 1:1 + len(heat)].ravel().tolist() if cams else axes.ravel().tolist()
    fig.colorbar(shown, ax=gradient_axes, shrink=0.6, label="|input gradient| (one scale for all maps)")
    if cams:
        fig.colorbar(cam_shown, ax=axes[:, 1 + len(heat):-1].ravel().tolist(), shrink=0.6,
                     label="Grad-CAM (one scale for all terms)")
    save_figure(fig, out / "saliency.png")
    names = [*heat, *(f"Grad-CAM {name}" for name in cams)]
    log.info("saliency of %d images per loss term (%s) in %s", len(x), ", ".join(names), out)
    return ["saliency.png"], {name: g.abs().mean().item() for name, g in grads.items()} | {
        f"Grad-CAM {name}": c.mean().item() for name, c in cams.items()}
