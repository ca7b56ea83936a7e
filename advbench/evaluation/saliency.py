"""Input gradients for saliency maps, whatever the task: |dL/dx|, SmoothGrad, and for training losses with several
terms (mixed, TRADES, MART) each term's own input gradient."""
import torch

from advbench.attacks.gradients import attack_mode, loss_and_grad
from advbench.evaluation.gradcam import gradcam_maps


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


def saliency_maps(model, x, targets, attack, mode, task, s) -> tuple:
    """(Grad-CAM maps, input-gradient maps, x_adv) of a saliency grid (settings ``s``): Grad-CAM first, so that a
    bad saliency.layer fails before the rest (it draws no random number); |dL/dx|, SmoothGrad, the attack, and each
    training term's gradient."""
    objective = task.objective()
    loss_fn = lambda outputs: objective(outputs, targets)  # noqa: E731
    cams = gradcam_maps(model, x, {"Grad-CAM (loss)": loss_fn}, s)  # {} unless saliency.method=gradcam
    grads = {"|dL/dx|": input_gradient(model, x, loss_fn)}
    if s.smoothgrad:
        grads["SmoothGrad"] = smoothgrad(model, x, loss_fn, s.smoothgrad_samples, s.smoothgrad_sigma)
    x_adv = attack(model, x, targets)
    return cams, grads | term_gradients(model, x, x_adv, targets, mode, task), x_adv
