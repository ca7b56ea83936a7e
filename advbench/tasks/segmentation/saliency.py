"""``job=saliency`` for segmentation: per image its true mask, the clean and adversarial predictions, |dL/dx| of the
mean pixel cross-entropy, SmoothGrad, each training loss term's input gradient and, with
saliency.method=gradcam, the loss's Grad-CAM, in one grid."""
import logging

import numpy as np
import torch

from advbench.data.loaders import to_unit
from advbench.evaluation.plots import plt, save_figure
from advbench.evaluation.saliency import saliency_maps
from advbench.tasks.segmentation.metrics import IGNORE
from advbench.tasks.segmentation.plots import _colours

log = logging.getLogger(__name__)

def _gray(image: torch.Tensor) -> np.ndarray:
    return image.detach().cpu().permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy()

def write_segmentation_saliency(model, test: tuple, attack, task, mode, s, device, out) -> tuple:
    """saliency.png, a row per test image: image, true mask, clean and adversarial predictions, then the input
    gradient maps on one colour scale per row (largest |gradient| over channels) and Grad-CAM over the image on a
    scale of its own. Returns the file and each map's mean (|gradient|, Grad-CAM)."""
    x, masks = to_unit(test[0][:s.n_examples]).to(device), task.to(test[1][:s.n_examples], device)
    cams, grads, x_adv = saliency_maps(model, x, masks, attack, mode, task, s)
    with torch.no_grad():
        pred, pred_adv = (task.labels(task.predict(model, v)).cpu() for v in (x, x_adv))
    k = len(task.classes)
    cmap, shown_mask = _colours(k), lambda m: np.where(m.cpu().numpy() == IGNORE, k, m.cpu().numpy())
    columns = 4 + len(grads) + len(cams)
    fig, axes = plt.subplots(len(x), columns, figsize=(2.1 * columns + 1.0, 2.1 * len(x)), squeeze=False)
    for i, row in enumerate(axes):
        row[0].imshow(_gray(x[i]), cmap="gray", vmin=0, vmax=1)
        row[0].set_title("image", fontsize=7)
        for ax, (mask, title) in zip(row[1:4], [(masks[i], "true mask"), (pred[i], "prediction"),
                                                (pred_adv[i], f"adversarial ({attack.name})")]):
            ax.imshow(shown_mask(mask), cmap=cmap, vmin=0, vmax=k, interpolation="nearest")
            ax.set_title(title, fontsize=7)
        maps = {name: g[i].abs().amax(0).detach().cpu() for name, g in grads.items()}
        top = max(m.max().item() for m in maps.values()) or 1.0
        for ax, (name, heat) in zip(row[4:], maps.items()):
            shown = ax.imshow(heat.numpy(), cmap="inferno", vmin=0, vmax=top)
            ax.set_title(name, fontsize=7)
        fig.colorbar(shown, ax=list(row[4:4 + len(grads)]), fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        if cams:  # a map of activations, not of |dL/dx|: a scale of its own
            cam_top = max(c[i].max().item() for c in cams.values()) or 1.0
            for ax, (name, cam) in zip(row[4 + len(grads):], cams.items()):
                ax.imshow(_gray(x[i]), cmap="gray", vmin=0, vmax=1)
                cam_shown = ax.imshow(cam[i].cpu().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=cam_top)
                ax.set_title(name, fontsize=7)
            fig.colorbar(cam_shown, ax=list(row[4 + len(grads):]), fraction=0.046, pad=0.02).ax.tick_params(
                labelsize=6)
        for ax in row:
            ax.axis("off")
    save_figure(fig, out / "saliency.png")
    log.info("saliency grid of %d test images (%s) in %s", len(x), ", ".join([*grads, *cams]), out / "saliency.png")
    return ["saliency.png"], {name: g.abs().mean().item() for name, g in (grads | cams).items()}
