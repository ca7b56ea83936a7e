"""One epoch of (adversarial) training. Each training mode is a step function: attack, forward, loss."""
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from advbench.amp import autocast
from advbench.distributed import bare
from advbench.embedding import perturb_embedding_weights, restore_embedding_weights
from advbench.errors import RunFailed
from advbench.robust_eval import predict
from advbench.losses import mart_loss, trades_attack_loss, trades_loss
from advbench.schedules import eps_factor


def standard_step(model, x, y, attack, cfg):
    """Clean training: cross-entropy on clean examples."""
    logits = model(x)
    return F.cross_entropy(logits.float(), y), logits, None


def adversarial_step(model, x, y, attack, cfg):
    """Madry et al. 2018 (and Fast-AT with FGSM): cross-entropy on adversarial examples only."""
    # The attack runs in its own bn_mode (eval by default) and leaves no parameter gradients.
    logits_adv = model(attack(model, x, y))
    return F.cross_entropy(logits_adv.float(), y), None, logits_adv


def mixed_step(model, x, y, attack, cfg):
    """Goodfellow et al. 2015: (1 - w) * clean + w * adversarial cross-entropy."""
    x_adv = attack(model, x, y)
    # One forward over both halves: batch norm sees the mixed batch, as the mixed objective's data.
    logits, logits_adv = model(torch.cat([x, x_adv])).float().chunk(2)
    w = cfg.training.adv_weight
    return (1 - w) * F.cross_entropy(logits, y) + w * F.cross_entropy(logits_adv, y), logits, logits_adv


def trades_step(model, x, y, attack, cfg):
    """TRADES (Zhang et al. 2019): CE(clean) + beta * KL(p(x) || p(x_adv)), x_adv maximizing that KL."""
    p_clean = predict(bare(model), x, logits=True).softmax(1)
    x_adv = attack(model, x, p_clean, loss_fn=trades_attack_loss)
    logits, logits_adv = model(torch.cat([x, x_adv])).float().chunk(2)
    return trades_loss(logits, logits_adv, y, cfg.training.beta), logits, logits_adv


def mart_step(model, x, y, attack, cfg):
    """MART (Wang et al. 2020): boosted CE on x_adv + beta * misclassification-weighted KL."""
    x_adv = attack(model, x, y)
    logits, logits_adv = model(torch.cat([x, x_adv])).float().chunk(2)
    return mart_loss(logits, logits_adv, y, cfg.training.beta), logits, logits_adv


def embedding_step(model, x, y, attack, cfg):
    """Text, mixed (Miyato et al. 2017): clean CE plus CE at the adversarial embeddings; their gradients add."""
    logits = model(x)
    net = bare(model)
    emb = net.embedding(x)
    r = (attack(model, x, y) - emb).detach()  # the adversarial perturbation, a constant for the update
    logits_adv = net.classify(emb + r)
    return F.cross_entropy(logits.float(), y) + F.cross_entropy(logits_adv.float(), y), logits, logits_adv


# mode -> (step, attacks it accepts; None: any, unused). free replays batches itself (free_replays below).
MODES = {
    "standard": (standard_step, None),
    "adversarial": (adversarial_step, ("fgsm", "pgd", "fgm")),
    "mixed": (mixed_step, ("fgsm", "pgd", "fgm")),
    "fast": (adversarial_step, ("fgsm",)),
    "free": (None, ("fgsm",)),
    "trades": (trades_step, ("pgd", "fgsm")),
    "mart": (mart_step, ("pgd", "fgsm")),
}


def free_replays(model, x, y, delta, eps: float, cfg, update):
    """Free-AT (Shafahi et al. 2019): replay the batch m times; one backward pass gives both the parameter
    gradient (used by ``update``) and the input gradient (an FGSM step on the persistent ``delta``)."""
    for _ in range(cfg.training.replays):
        x_adv = (x + delta).clamp(0, 1).requires_grad_(True)
        with autocast(x.device, cfg.amp):
            logits_adv = model(x_adv)
        loss = F.cross_entropy(logits_adv.float(), y)
        update(loss)  # backward fills x_adv.grad too (scaled under fp16: the sign is all we use)
        delta = (delta + eps * x_adv.grad.sign()).clamp(-eps, eps)
    return loss.detach(), logits_adv.detach(), delta


def embedding_weights_step(model, x, y, eps: float, cfg, scaler, update):
    """Text, mixed, attack.target=embedding_weights (the common NLP FGM recipe): after the clean backward pass,
    move the embedding matrix W along its gradient, add the adversarial loss's gradient, restore W bit for bit,
    then step the optimizer."""
    with autocast(x.device, cfg.amp):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    adversarial = {}

    def add_adversarial_gradient():
        embedding = bare(model).embedding
        backup = perturb_embedding_weights(embedding, eps)
        with autocast(x.device, cfg.amp):
            adversarial["logits"] = model(x)
        adversarial["loss"] = F.cross_entropy(adversarial["logits"].float(), y)
        scaler.scale(adversarial["loss"]).backward()
        restore_embedding_weights(embedding, backup)

    update(loss, add_adversarial_gradient)
    return (loss + adversarial["loss"]).detach(), logits.detach(), adversarial["logits"].detach()


def train_epoch(model, loader, optimizer, scheduler, scaler, attack, cfg, device, epoch: int = 1,
                desc="train") -> dict:
    """Train one pass over ``loader``; return the pass's loss, accuracies, lr and speed."""
    step, _ = MODES[cfg.training.name]
    model.train()
    net = bare(model)  # attacks and clean predictions use the bare module: no DDP gradient synchronisation
    totals = {"loss": 0.0, "clean": 0, "adv": 0, "n": 0}
    delta = None  # free: the perturbation carried from batch to batch

    def update(loss, add_gradient=None):
        if not torch.isfinite(loss.detach()).all():  # stop before a non-finite loss reaches the weights
            raise RunFailed(f"diverged at epoch {epoch} step {i + 1}: the training loss is "
                            f"{loss.detach().float().sum().item()}; "
                            + (f"last.pt keeps epoch {epoch - 1}" if epoch > 1 else "no epoch finished")
                            + " (lower lr, or set grad_clip)")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if add_gradient:  # the embedding-weights attack adds its adversarial gradient to the clean one
            add_gradient()
        if cfg.grad_clip is not None:
            scaler.unscale_(optimizer)  # clip the true gradient, not the fp16-scaled one
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, disable=not (cfg.progress and sys.stderr.isatty()))
    for i, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        lr = optimizer.param_groups[0]["lr"]
        scaled = attack and attack.scaled(eps_factor(cfg.eps_warmup_epochs, epoch - 1 + i / len(loader)))
        batch_attack = scaled and (lambda _, *args, **kw: scaled(net, *args, **kw))
        target = attack.target if attack else "input"
        if cfg.training.name != "standard" and target == "embedding_weights":
            loss, logits, logits_adv = embedding_weights_step(model, x, y, scaled.eps, cfg, scaler, update)
        elif cfg.training.name == "free":
            if delta is None or delta.shape != x.shape:
                delta = torch.zeros_like(x)
            loss, logits_adv, delta = free_replays(model, x, y, delta, scaled.eps, cfg, update)
            logits = None
        else:
            text_step = embedding_step if target == "embedding" and cfg.training.name != "standard" else step
            with autocast(device, cfg.amp):
                loss, logits, logits_adv = text_step(model, x, y, batch_attack, cfg)
            update(loss)

        if logits is None:  # adversarial-only modes: clean accuracy costs one extra no-grad forward
            logits = predict(net, x, device, cfg.amp, logits=True)
        totals["loss"] += loss.item() * len(y)
        totals["clean"] += (logits.argmax(1) == y).sum().item()
        if logits_adv is not None:
            totals["adv"] += (logits_adv.argmax(1) == y).sum().item()
        totals["n"] += len(y)
        bar.set_postfix(loss=f"{totals['loss'] / totals['n']:.3f}", acc=f"{totals['clean'] / totals['n']:.3f}")
    seconds = time.perf_counter() - start
    n = max(totals["n"], 1)
    return {
        "train_loss": totals["loss"] / n,
        "train_clean_acc": totals["clean"] / n,
        "train_adv_acc": totals["adv"] / n if cfg.training.name != "standard" else None,
        "lr": lr,
        "seconds": seconds,
        "images_per_s": totals["n"] / seconds,
    }
