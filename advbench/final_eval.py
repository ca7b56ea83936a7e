"""The evaluation that ends every training run and makes up ``task=eval``: test accuracy under attack,
per-example flags, sanity checks, the robustness curve and example images."""
import csv
import io
import logging
from dataclasses import asdict

import numpy as np
from omegaconf import OmegaConf

from advbench.attack_spec import build_attack
from advbench.data import to_unit
from advbench.eps import parse_eps
from advbench.errors import AdvbenchError
from advbench.robust_eval import predict, robust_flags, summarize
from advbench.outputs import atomic_write
from advbench.plots import plot_examples, plot_robustness_curve
from advbench.sanity import sanity_checks
from advbench.text import is_text

log = logging.getLogger(__name__)


def embedding_attack(cfg, eps):
    """Text: the run's own attack, on the embedding output, at budget ``eps``; None without an attack."""
    if cfg.attack.name == "none":
        return None
    return build_attack(OmegaConf.merge(cfg.attack, {"target": "embedding", "restarts": 1}), eps, text=True)


def eval_attacks(cfg, eps) -> dict:
    """``eval.attacks`` built at budget ``eps`` (the run's eps text unless given). Text evaluates under the run's
    attack on the embedding output, plus the ``eval.attacks`` entries that set a target themselves."""
    text = is_text(cfg.dataset)
    specs = {name: spec for name, spec in cfg.eval.attacks.items() if not text or spec.target is not None}
    attacks = {name: build_attack(spec, eps, text) for name, spec in specs.items()}
    if text:
        attacks = {f"{cfg.attack.name}_embedding": embedding_attack(cfg, eps)} | attacks
    return {name: a for name, a in attacks.items() if a is not None}


def check_eval_config(cfg) -> None:
    """Build every evaluation attack at every eps, so a bad value stops the run before any work."""
    for eps in [cfg.eps, *(cfg.eval.eps_list or [])]:
        eval_attacks(cfg, eps)
    if cfg.eval.save_examples and is_text(cfg.dataset):
        raise AdvbenchError("eval.save_examples draws images; for text use task=saliency")


def save_flags(path, flags: dict) -> None:
    """Per-example flags as ``robust_flags.npz``: ``clean``, one array per attack, and ``worst_case``."""
    arrays = {name: f.numpy() for name, f in flags.items()}
    arrays["worst_case"] = np.logical_and.reduce(list(arrays.values()))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def robustness_curve(model, x, y, cfg, device, out) -> list:
    """Accuracy at each eps of ``eval.eps_list``; writes robustness_curve.csv and .png."""
    rows = []
    for eps in sorted(cfg.eval.eps_list, key=parse_eps):
        attacks = eval_attacks(cfg, eps)
        summary = summarize(robust_flags(model, x, y, attacks, device, cfg.amp, cfg.eval.batch_size,
                                         cfg.eval.cascade))
        rows.append({"eps": str(eps), "eps_value": parse_eps(eps), "clean_acc": summary["clean_acc"],
                     **summary["robust_acc_by_attack"], "robust_acc": summary["robust_acc"]})
        log.info("eps=%s: robust accuracy %s", eps, summary["robust_acc_by_attack"])
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "robustness_curve.csv", lambda f: f.write(text.getvalue().encode()))
    plot_robustness_curve(rows, list(eval_attacks(cfg, cfg.eval.eps_list[0])), out / "robustness_curve.png")
    return rows


def final_evaluation(model, test: tuple, cfg, device, out) -> dict:
    """Evaluate ``model`` on the first ``eval.n_examples`` test examples and write the evaluation's files."""
    x, y = (t[:cfg.eval.n_examples] for t in test)
    attacks = eval_attacks(cfg, cfg.eps)
    keep = min(cfg.eval.save_examples, len(y))
    flags = robust_flags(model, x, y, attacks, device, cfg.amp, cfg.eval.batch_size, cfg.eval.cascade, keep)
    if keep:
        flags, x_adv = flags
        clean = to_unit(x[:keep])
        plot_examples(clean, x_adv, y[:keep].tolist(), predict(model, clean.to(device)).tolist(),
                      predict(model, x_adv.to(device)).tolist(), out / "adversarial_examples.png")
    save_flags(out / "robust_flags.npz", flags)
    results = summarize(flags) | {
        "cascade": cfg.eval.cascade,
        "attacks": {name: asdict(a) for name, a in attacks.items()},
    }
    results["sanity"] = sanity_checks(model, x, y, attacks, flags, cfg, device)
    if cfg.eval.eps_list:
        results["robustness_curve"] = robustness_curve(model, x, y, cfg, device, out)
    return results
