"""``task=saliency`` for images: |dL/dx|, SmoothGrad, the adversarial example and its perturbation, and for
training losses with several terms (mixed, TRADES, MART) each term's own input gradient."""
import logging

import torch

from advbench.attacks.gradients import attack_mode, loss_and_grad
from advbench.data.loaders import to_unit
from advbench.evaluation.plots import plt, save_figure

log = logging.getLogger(__name__)


def input_gradient(model, x, loss_fn) -> torch.Tensor:
    """d loss_fn(model(x)) / dx (summed over examples), in eval mode, the parameters untouched."""
    with attack_mode(model):
        return loss_and_grad(model, x, loss_fn)[2]


def smoothgrad(model, x, loss_fn, samples: int, sigma: float) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): the input gradient averaged over Gaussian-noised copies of x."""
    noisy = [(x + sigma * torch.randn_like(x)).clamp(0, 1) for _ in range(samples)]
    return torch.stack([input_gradient(model, n, loss_fn) for n in noisy]).mean(0)


def term_gradients(model, x, x_adv, y, mode, task) -> dict:
    """The input gradient of each term of the training mode's loss (``mode.terms``), where it has several: at x
    for the terms of the clean point, at x_adv for those of the adversarial one, the other point's outputs fixed."""
    terms = mode.terms(task, y)
    if not terms:
        return {}
    clean, adv = task.predict(model, x), task.predict(model, x_adv)
    return {name: (input_gradient(model, x, lambda out, t=term: t.fn(out, adv, False)) if term.at == "clean"
                   else input_gradient(model, x_adv, lambda out, t=term: t.fn(clean, out, False)))
            for name, term in terms.items()}


def _heat(grad: torch.Tensor) -> torch.Tensor:
    """|grad| as an (H, W) map scaled to [0, 1]: the largest absolute value over channels."""
    heat = grad.abs().amax(0)
    return heat / heat.max().clamp_min(1e-12)


def write_saliency(model, test: tuple, attack, mode, s, device, out) -> tuple:
    """One PNG per test image (saliency_<i>.png; settings ``s``: the saliency config); returns the files written
    and each map's mean |gradient| (so the scales of the loss terms can be compared)."""
    task = attack.task
    x, y = to_unit(test[0][:s.n_examples]).to(device), task.to(test[1][:s.n_examples], device)
    objective = task.objective()
    loss_fn = lambda outputs: objective(outputs, y)  # noqa: E731
    grads = {"|dL/dx|": input_gradient(model, x, loss_fn)}
    if s.smoothgrad:
        grads["SmoothGrad"] = smoothgrad(model, x, loss_fn, s.smoothgrad_samples, s.smoothgrad_sigma)
    x_adv = attack(model, x, y)
    terms = term_gradients(model, x, x_adv, y, mode, task)
    pred, pred_adv = task.labels(task.predict(model, x)), task.labels(task.predict(model, x_adv))
    delta = x_adv - x
    files = []
    for i in range(len(y)):
        panels = [(x[i], f"y={y[i].item()} pred={pred[i]}", None), *((_heat(g[i]), n, "inferno")
                                                                       for n, g in grads.items()),
                  (x_adv[i], f"adversarial: pred={pred_adv[i]}", None),
                  (0.5 + 0.5 * delta[i] / delta[i].abs().max().clamp_min(1e-12), "perturbation (amplified)", None),
                  *((_heat(g[i]), n, "inferno") for n, g in terms.items())]
        fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.6), squeeze=False)
        for ax, (image, title, cmap) in zip(axes[0], panels):
            image = image.detach().cpu()
            image = image.permute(1, 2, 0).squeeze(-1) if image.dim() == 3 else image
            ax.imshow(image.clamp(0, 1).numpy(), cmap=cmap or "gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
        save_figure(fig, out / f"saliency_{i}.png")
        files.append(f"saliency_{i}.png")
    log.info("saliency maps of %d test images (%s) in %s", len(files), ", ".join([*grads, *terms]), out)
    return files, {name: g.abs().mean().item() for name, g in {**grads, **terms}.items()}
