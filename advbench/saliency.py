"""``task=saliency``: where a trained model looks. For test images: |dL/dx|, SmoothGrad, the adversarial example
and its perturbation, and for training losses with several terms (mixed, TRADES, MART) each term's own gradient.
For text: each token's gradient norm, as a highlighted HTML page and a PNG."""
import html
import logging

import torch
import torch.nn.functional as F

from advbench.attacks import attack_mode, loss_and_grad
from advbench.data import to_unit
from advbench.embedding import FromEmbeddings
from advbench.robust_eval import predict
from advbench.losses import mart_boosted_ce, mart_weighted_kl, trades_kl
from advbench.outputs import atomic_write
from advbench.plots import plt, save_figure

log = logging.getLogger(__name__)


def _ce(y):
    return lambda logits: F.cross_entropy(logits, y, reduction="none")


def input_gradient(model, x, loss_fn) -> torch.Tensor:
    """d loss_fn(model(x)) / dx, with the model in eval mode and its parameters untouched."""
    with attack_mode(model):
        return loss_and_grad(model, x, loss_fn)[2]


def smoothgrad(model, x, y, samples: int, sigma: float) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): the input gradient averaged over Gaussian-noised copies of x."""
    noisy = [(x + sigma * torch.randn_like(x)).clamp(0, 1) for _ in range(samples)]
    return torch.stack([input_gradient(model, n, _ce(y)) for n in noisy]).mean(0)


def term_gradients(model, x, x_adv, y, cfg) -> dict:
    """The input gradient of each term of the run's training loss, where it has several."""
    mode, beta = cfg.training.name, cfg.training.beta
    if mode == "mixed":
        w = cfg.training.adv_weight
        return {"clean CE": (1 - w) * input_gradient(model, x, _ce(y)),
                "adversarial CE (at x_adv)": w * input_gradient(model, x_adv, _ce(y))}
    if mode in ("trades", "mart"):
        p_adv_logits = predict(model, x_adv, logits=True)  # fixed: the KL's gradient is taken in the clean x
        if mode == "trades":
            kl = input_gradient(model, x, lambda logits: beta * trades_kl(logits, p_adv_logits))
            return {"CE": input_gradient(model, x, _ce(y)), "beta * KL(p(x) || p(x_adv))": kl}
        return {"boosted CE (at x_adv)": input_gradient(model, x_adv, lambda logits: mart_boosted_ce(logits, y)),
                "beta * weighted KL": input_gradient(model, x, lambda logits: beta * mart_weighted_kl(
                    logits, p_adv_logits, y))}
    return {}


def _heat(grad: torch.Tensor) -> torch.Tensor:
    """|grad| as an (H, W) map scaled to [0, 1]: the largest absolute value over channels."""
    heat = grad.abs().amax(0)
    return heat / heat.max().clamp_min(1e-12)


def write_saliency(model, test: tuple, attack, cfg, device, out) -> tuple:
    """One PNG per test image (saliency_<i>.png); returns the files written and each map's mean |gradient|
    (so the scales of the loss terms can be compared)."""
    s = cfg.saliency
    x, y = to_unit(test[0][:s.n_examples]).to(device), test[1][:s.n_examples].to(device)
    grads = {"|dL/dx|": input_gradient(model, x, _ce(y))}
    if s.smoothgrad:
        grads["SmoothGrad"] = smoothgrad(model, x, y, s.smoothgrad_samples, s.smoothgrad_sigma)
    x_adv = attack(model, x, y)
    terms = term_gradients(model, x, x_adv, y, cfg)
    pred, pred_adv = predict(model, x).tolist(), predict(model, x_adv).tolist()
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


def token_saliency(model, ids, y) -> torch.Tensor:
    """Per token: the L2 norm of d CE / d embedding, (N, L); zero at padding."""
    pad = ids == 0
    with torch.no_grad():
        emb = model.embedding(ids)
    grad = input_gradient(FromEmbeddings(model, pad), emb, _ce(y))
    return grad.norm(dim=-1).masked_fill(pad, 0)


def write_text_saliency(model, test: tuple, vocab: list, cfg, device, out) -> tuple:
    """saliency.html (tokens highlighted by gradient norm) and saliency_text.png for the first N test texts."""
    ids, y = test[0][:cfg.saliency.n_examples].to(device), test[1][:cfg.saliency.n_examples].to(device)
    norms, pred = token_saliency(model, ids, y).cpu(), predict(model, ids).tolist()
    rows = []
    for i in range(len(y)):
        length = int((ids[i] != 0).sum())
        weights = (norms[i, :length] / norms[i, :length].max().clamp_min(1e-12)).tolist()
        rows.append(([vocab[t] for t in ids[i, :length].tolist()], weights, y[i].item(), pred[i]))
    spans = ["<p><b>y={} pred={}</b>: {}</p>".format(label, p, " ".join(
        f'<span style="background: rgba(255, 80, 0, {w:.2f})" title="{w:.2f}">{html.escape(t)}</span>'
        for t, w in zip(tokens, weights))) for tokens, weights, label, p in rows]
    page = ("<!doctype html><meta charset='utf-8'><title>advbench token saliency</title>"
            "<p>Token colour: the norm of the loss gradient at the token's embedding, per text scaled to its "
            "largest.</p>\n" + "\n".join(spans) + "\n")
    atomic_write(out / "saliency.html", lambda f: f.write(page.encode()))
    width = max(len(tokens) for tokens, *_ in rows) or 1
    fig, axes = plt.subplots(len(rows), 1, figsize=(max(6, 0.45 * width), 0.9 * len(rows) + 0.5), squeeze=False)
    for ax, (tokens, weights, label, p) in zip(axes[:, 0], rows):
        ax.imshow([weights + [0.0] * (width - len(weights))], cmap="Oranges", vmin=0, vmax=1, aspect="auto")
        for j, token in enumerate(tokens):
            ax.text(j, 0, token, ha="center", va="center", fontsize=6, rotation=90 if len(token) > 3 else 0)
        ax.set_title(f"y={label} pred={p}", fontsize=7, loc="left")
        ax.axis("off")
    save_figure(fig, out / "saliency_text.png")
    log.info("token saliency of %d test texts in %s", len(rows), out)
    return ["saliency.html", "saliency_text.png"], {"token gradient norm": norms.mean().item()}
