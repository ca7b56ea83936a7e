"""``job=saliency`` for images: |dL/dx|, SmoothGrad, the adversarial example and its perturbation, each training
loss term's own input gradient and, with saliency.method=gradcam, the loss's Grad-CAM, in one grid."""
import logging

import torch

from advbench.data.loaders import to_unit
from advbench.evaluation.plots import plt, save_figure
from advbench.evaluation.saliency import saliency_maps

log = logging.getLogger(__name__)


def _magnitude(grad: torch.Tensor) -> torch.Tensor:
    """|grad| as an (H, W) map: the largest absolute value over channels, unscaled (rows share one scale)."""
    return grad.abs().amax(0)


CLIP = 99.0  # percentile of a row's map values where its shared colour scale ends


def shared_top(maps: list) -> float:
    """The top of one colour scale for ``maps``: the 99th percentile of all their values, not the maximum. An input
    gradient is sparse, a few pixels far above the rest: scaled to its maximum, it looks empty beside SmoothGrad's
    smoother map, although the two are compared on one scale (Smilkov et al. 2017 clip at the 99th percentile)."""
    values = torch.cat([m.flatten().float() for m in maps])
    return torch.quantile(values, CLIP / 100).item() or values.max().item() or 1.0


def write_saliency(model, test: tuple, attack, mode, s, device, out) -> tuple:
    """saliency.png, one grid for the run (settings ``s``: the saliency config): a row per test image (image,
    adversarial example, amplified perturbation, then the maps), the maps of a row on one shared colour scale
    (clipped at the 99th percentile of their values) with its colorbar, so that |dL/dx|, SmoothGrad and each loss
    term compare; Grad-CAM (saliency.method=gradcam) last, over the image, on a scale of its own. Returns the file and each map's mean (|gradient|, Grad-CAM)."""
    task = attack.task
    x, y = to_unit(test[0][:s.n_examples]).to(device), task.to(test[1][:s.n_examples], device)
    cams, grads, x_adv = saliency_maps(model, x, y, attack, mode, task, s)
    pred, pred_adv = task.labels(task.predict(model, x)), task.labels(task.predict(model, x_adv))
    delta = x_adv - x
    columns = 3 + len(grads) + len(cams)
    fig, axes = plt.subplots(len(y), columns, figsize=(2.0 * columns + 0.6, 2.1 * len(y)), squeeze=False)
    for i, row in enumerate(axes):
        images = [(x[i], f"y={y[i].item()} pred={pred[i]}"), (x_adv[i], f"adversarial: pred={pred_adv[i]}"),
                  (0.5 + 0.5 * delta[i] / delta[i].abs().max().clamp_min(1e-12), "perturbation (amplified)")]
        for ax, (image, title) in zip(row, images):
            ax.imshow(_hwc(image).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=7)
        maps = {name: _magnitude(g[i]).detach().cpu() for name, g in grads.items()}
        top = shared_top(list(maps.values()))
        gradient_axes = row[3:3 + len(grads)]
        for ax, (name, heat) in zip(gradient_axes, maps.items()):
            shown = ax.imshow(heat.numpy(), cmap="inferno", vmin=0, vmax=top)
            ax.set_title(name, fontsize=7)
        bar = fig.colorbar(shown, ax=list(gradient_axes), fraction=0.046, pad=0.02, extend="max")
        bar.ax.tick_params(labelsize=6)
        bar.set_label(f"|gradient|, clipped at the {CLIP:g}th percentile", fontsize=6)
        if cams:  # Grad-CAM over the image, on a scale of its own (a map of activations, not of |dL/dx|)
            cam_top = max(c[i].max().item() for c in cams.values()) or 1.0
            for ax, (name, cam) in zip(row[3 + len(grads):], cams.items()):
                ax.imshow(_hwc(x[i]).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
                shown = ax.imshow(cam[i].cpu().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=cam_top)
                ax.set_title(name, fontsize=7)
            fig.colorbar(shown, ax=list(row[3 + len(grads):]), fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        for ax in row:
            ax.axis("off")
    save_figure(fig, out / "saliency.png")
    log.info("saliency grid of %d test images (%s) in %s", len(y), ", ".join([*grads, *cams]), out / "saliency.png")
    return ["saliency.png"], {name: g.abs().mean().item() for name, g in (grads | cams).items()}


def _hwc(image: torch.Tensor) -> torch.Tensor:
    image = image.detach().cpu()
    return image.permute(1, 2, 0).squeeze(-1) if image.dim() == 3 else image
