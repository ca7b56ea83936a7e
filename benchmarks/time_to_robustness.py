"""Time to robustness on Fashion-MNIST at eps=0.1: fast, free, PGD-7 and TRADES training, side by side in one run.

Each method trains small_cnn through the real CLI (one subprocess each, one after the other, nothing else
running) and is evaluated under PGD-20 on the full test set; the table gives training wall time (from
metrics.jsonl) and clean / PGD-20 test accuracy, and is written to benchmarks/time_to_robustness.md.
A benchmark, not a test: about 30 minutes on 2 CPU cores.

    python benchmarks/time_to_robustness.py [--out benchmarks/time_to_robustness.md]
"""
import argparse
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("benchmark")
METHODS = {
    "fast (FGSM-RS, 5 epochs)": ["+experiment=fast_fashion_mnist"],
    "free (m=4, 12 epochs of budget)": ["training=free", "attack=fgsm", "epochs=12", "training.replays=4"],
    "PGD-7 (5 epochs)": ["+experiment=pgd_fashion_mnist"],
    "TRADES (beta=6, 7-step KL attack, 5 epochs)": ["training=trades", "attack=pgd", "attack.steps=7",
                                                     "attack.alpha=0.025"],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("time_to_robustness.md")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, overrides) in enumerate(METHODS.items()):
            run = Path(tmp) / str(i)
            log.info("%s ...", name)
            subprocess.run([sys.executable, "-m", "advbench", *overrides, "progress=false",
                            f"hydra.run.dir={run}"], check=True, capture_output=True)
            metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            results = json.loads((run / "results.json").read_text())
            rows.append((name, sum(m["seconds"] for m in metrics), results["clean_acc"], results["robust_acc"]))
    table = ["| method | training seconds | clean acc | PGD-20 acc |", "| --- | ---: | ---: | ---: |"]
    table += [f"| {n} | {s:.0f} | {c:.2%} | {r:.2%} |" for n, s, c, r in rows]
    Path(args.out).write_text("\n".join(table) + "\n")
    log.info("\n".join(table))


if __name__ == "__main__":
    main()
