"""Text adversarial training steps on a tiny Hugging Face BERT (a benchmark, not a test).

In one process, on the same model, batches and optimizer: an epoch of clean training, of the FGM recipe on the
embedding matrix, of PGD-3 on the embeddings (mixed) and of FreeLB-3, through advbench's training loop (ratios to
the clean epoch); and advbench's FGM epoch beside the hand-written recipe the NLP competitions copy (backward,
move the matrix along its gradient, backward again, restore, step). Needs transformers and tokenizers.

``--runs N`` measures N times over (each run ``--repeats`` round robins) and prints each run's advbench FGM /
hand-written ratio and their minimum: "at least x in every one of N runs" reads off the last lines. The ratio is
given two ways: paired, the median over the rounds of the ratio of the two FGM epochs run back to back (robust to
load that comes and goes on a shared machine), and fastest, the ratio of each one's fastest epoch.

    python benchmarks/text_speed.py [--batches 30] [--batch-size 32] [--repeats 5] [--runs 5] [--fgm-only]
                                    [--threads 2] [--device cuda]
"""
import argparse
import logging
import statistics
import tempfile

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from timing import timed  # benchmarks/timing.py

from advbench.attacks.spec import make_attack
from advbench.data.loaders import TensorLoader
from advbench.tasks.text.data import synthetic_text
from advbench.tasks.text.tokens import hf_encoder
from advbench.models.hf import hf_classifier
from advbench.tasks.text.tiny_bert import build_tiny_bert
from advbench.tasks.text import TextClassification
from advbench.training import Plan, build_mode, train_epoch
from advbench.training.schedules import make_scheduler

log = logging.getLogger("benchmark")
FGM, HAND = "FGM (embedding matrix)", "hand-written FGM recipe"


def hand_written_fgm(model, batches, optimizer, eps: float, w: float = 0.5):
    """The recipe as it is usually written: clean backward, W += eps g/||g||, adversarial backward, restore W."""
    weight = model.embedding.weight
    for ids, y in batches:
        ((1 - w) * F.cross_entropy(model(ids), y)).backward()
        backup = weight.data.clone()
        weight.data.add_(eps * weight.grad / weight.grad.norm())
        (w * F.cross_entropy(model(ids), y)).backward()
        weight.data = backup
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=5, help="round-robin repetitions; the fastest counts")
    parser.add_argument("--runs", type=int, default=1, help="measurements, each of --repeats round robins")
    parser.add_argument("--fgm-only", action="store_true", help="time only advbench's FGM and the hand-written one")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.batches * args.batch_size
    texts, labels = synthetic_text(OmegaConf.create({"n_classes": 3, "n_train": n, "n_test": 1}))[0]
    path = build_tiny_bert(tempfile.mkdtemp(), texts, 3, vocab_size=500, hidden=64)
    _, _, encode = hf_encoder(str(path), 32)
    ids, y = encode(texts).to(device), torch.tensor(labels).to(device)
    task = TextClassification(3)
    torch.manual_seed(0)
    model = hf_classifier((32,), 3, name_or_path=str(path)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = make_scheduler(optimizer, "constant", 10 ** 9)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    loader = TensorLoader(ids, y, args.batch_size)
    recipes = {
        "clean": ("standard", None),
        "FGM (embedding matrix)": ("mixed", make_attack("fgm", eps=args.eps, task=task, target="embedding_weights")),
        "PGD-3 (embeddings, mixed)": ("mixed", make_attack("pgd", "l2", args.eps, steps=3, random_start=True,
                                                           task=task, target="embedding")),
        "FreeLB-3": ("freelb", make_attack("pgd", "l2", args.eps, steps=3, task=task, target="embedding")),
    }
    if args.fgm_only:
        recipes = {FGM: recipes[FGM]}
    epochs = {}
    batches = [(ids[i:i + args.batch_size], y[i:i + args.batch_size]) for i in range(0, n, args.batch_size)]
    for name, (mode_name, attack) in recipes.items():
        mode = build_mode(OmegaConf.create({"name": mode_name, "adv_weight": 0.5, "init_mag": 0.0}), task)
        epochs[name] = (lambda mode=mode, attack=attack: train_epoch(
            model, loader, mode, task, attack, optimizer, scheduler, scaler, Plan(), device))
        epochs[name]()  # warm-up
        if name == FGM:  # the two FGM epochs back to back: the ratio compares epochs run under the same load
            epochs[HAND] = lambda: hand_written_fgm(model, batches, optimizer, args.eps)
            epochs[HAND]()
    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {threads} thread{'s' * (threads > 1)}"
    log.info("tiny BERT (2 x 64), %d examples of 32 tokens, batch %d, %s", n, args.batch_size, where)
    paired, fastest = zip(*(run(epochs, device, args.repeats, n, number) for number in range(1, args.runs + 1)))
    for name, ratios in (("paired", paired), ("fastest", fastest)):
        log.info("advbench FGM / hand-written in %d runs (%s): %s; min %.2f", len(ratios), name,
                 " ".join(f"{r:.2f}" for r in ratios), min(ratios))


def run(epochs: dict, device, repeats: int, n: int, number: int) -> tuple:
    """One measurement of ``repeats`` round robins over ``epochs``, logged (each recipe's fastest epoch); advbench
    FGM's speed ratio to the hand-written recipe as the median over the rounds of the ratio of their back-to-back
    epochs (paired), and as the ratio of their fastest epochs."""
    # Round robin: drift and other load fall on every contender alike. The FGM pair runs back to back and swaps
    # places every other round (neither always runs second); the ratio within a pair compares epochs that saw the
    # same load, which the fastest epochs of each, perhaps from different rounds, need not have.
    best, pairs = {}, []
    for repeat in range(repeats):
        order = list(epochs)
        if repeat % 2:
            i, j = order.index(FGM), order.index(HAND)
            order[i], order[j] = order[j], order[i]
        seconds = {name: timed(epochs[name], device)[1] for name in order}
        best = {name: min(best.get(name, float("inf")), s) for name, s in seconds.items()}
        pairs.append(seconds[HAND] / seconds[FGM])
    hand = best.pop(HAND)
    for name, s in best.items():
        versus_clean = f"   {s / best['clean']:5.2f} x the time of a clean epoch" if "clean" in best else ""
        log.info("run %d  %-28s %7.0f examples/s%s", number, name, n / s, versus_clean)
    log.info("run %d  %-28s %7.0f examples/s", number, HAND, n / hand)
    paired, fastest = statistics.median(pairs), hand / best[FGM]
    log.info("run %d  advbench FGM / hand-written: %.2f paired, %.2f fastest (speed ratios)", number, paired, fastest)
    return paired, fastest


if __name__ == "__main__":
    main()
