"""Detection speed, measured side by side in one run (a benchmark, not a test):

1. an adversarial-training epoch of yolo_tiny (PGD-3 on every loss term) against a clean epoch, on the same
   digits_det scenes, batch and threads: images/s and the ratio;
2. advbench's PGD-10 against ART's ProjectedGradientDescent (adversarial-robustness-toolbox, if installed) on the
   same torchvision detector (fasterrcnn_mobilenet_v3_large_320_fpn, random weights, 64x64 images), the same
   images, eps, step and number of steps: images/s and the ratio.

    python benchmarks/detection_speed.py [--scenes 512] [--art-images 16]
"""
import argparse
import logging
import time

import numpy as np
import torch

from advbench.attacks import make_attack
from advbench.data.loaders import TensorLoader
from advbench.data.scenes import compose_scenes, digits_source
from advbench.models.torchvision_detectors import build
from advbench.models.yolo_tiny import YoloTiny
from advbench.tasks.detection import Detection
from advbench.training import Plan, build_mode, train_epoch
from advbench.training.schedules import make_scheduler

log = logging.getLogger("benchmark")
TASK = Detection(10)


def scenes(n: int, seed: int = 0):
    x, y = digits_source()
    made = compose_scenes(x, y, n, size=64, objects=(1, 3), scale=(0.8, 2.0), seed=seed)
    return made["images"], made["targets"]


def epoch_rate(mode_name: str, attack, x, targets) -> float:
    """Images/s of one advbench training epoch in ``mode_name``."""
    from omegaconf import OmegaConf
    torch.manual_seed(0)
    model = YoloTiny((1, 64, 64), 10, [0.1], [0.25])
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = TensorLoader(x, targets, 32, shuffle=True, generator=torch.Generator().manual_seed(0),
                          index=TASK.index)
    mode = build_mode(OmegaConf.create({"name": mode_name}), TASK)
    stats = train_epoch(model, loader, mode, TASK, attack, optimizer, make_scheduler(optimizer, "constant", 10**6),
                        torch.amp.GradScaler("cpu", enabled=False), Plan(), torch.device("cpu"))
    return stats["images_per_s"]


def art_rate(detector, x, targets, eps: float, steps: int) -> float | None:
    """Images/s of ART's PGD on the torchvision model inside ``detector``; None without ART."""
    try:
        from art.attacks.evasion import ProjectedGradientDescent
        from art.estimators.object_detection import PyTorchFasterRCNN
    except ImportError:
        log.info("adversarial-robustness-toolbox is not installed: pip install adversarial-robustness-toolbox")
        return None
    estimator = PyTorchFasterRCNN(model=detector.model, clip_values=(0.0, 1.0), channels_first=True,
                                  device_type="cpu")
    attack = ProjectedGradientDescent(estimator, norm=np.inf, eps=eps, eps_step=2.5 * eps / steps, max_iter=steps,
                                      num_random_init=0, batch_size=len(x), verbose=False)
    images = x.expand(-1, 3, -1, -1).numpy()  # ART's Faster R-CNN wrapper takes RGB
    labels = [{"boxes": t["boxes"].numpy(), "labels": (t["labels"] + detector.label_offset).numpy()}
              for t in targets]
    start = time.perf_counter()
    attack.generate(images, y=labels)
    return len(x) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=512)
    parser.add_argument("--art-images", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    x, targets = scenes(args.scenes)
    eps = 0.05
    pgd3 = make_attack("pgd", "linf", eps, steps=3, random_start=True, task=TASK)
    clean = epoch_rate("standard", None, x, targets)
    adversarial = epoch_rate("adversarial", pgd3, x, targets)
    log.info("%-40s %8.0f images/s", "yolo_tiny clean epoch", clean)
    log.info("%-40s %8.0f images/s", "yolo_tiny PGD-3 adversarial epoch", adversarial)
    log.info("%-40s %8.2f x the time of a clean epoch", "adversarial epoch", clean / adversarial)

    torch.manual_seed(0)
    detector = build("fasterrcnn_mobilenet_v3_large_320_fpn", 10, 64).eval()
    xa, ta = x[:args.art_images].float() / 255, targets[:args.art_images]
    pgd10 = make_attack("pgd", "linf", eps, steps=10, random_start=False, task=TASK)
    start = time.perf_counter()
    pgd10(detector, xa, ta)
    ours = len(xa) / (time.perf_counter() - start)
    theirs = art_rate(detector, xa, ta, eps, 10)
    log.info("%-40s %8.1f images/s", "advbench PGD-10 (Faster R-CNN)", ours)
    if theirs:
        log.info("%-40s %8.1f images/s", "ART PGD-10 (Faster R-CNN)", theirs)
        log.info("%-40s %8.2f x", "advbench / ART", ours / theirs)


if __name__ == "__main__":
    main()
