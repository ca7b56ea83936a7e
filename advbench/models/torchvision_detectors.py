"""torchvision's object detectors, wrapped so that advbench can attack and adversarially train them.

Images are floats in [0, 1] shaped (N, C, H, W) with C in {1, 3}; a target is
{"boxes": float (k, 4) xyxy pixels, "labels": int64 (k,)} with labels 0..n_classes-1 and k >= 0;
predictions are [{"boxes", "scores", "labels"}] with the same label convention.

Randomness: Faster R-CNN samples anchors and proposals (torch.randperm) whenever its losses are
computed, so its losses, and any attack built on them, are stochastic. By default they draw from
the global RNG; pass ``generator=`` to ``losses``/``terms`` to draw the sampling seed from it
instead (the global RNG is then left untouched). SSD, RetinaNet and FCOS losses are deterministic
with ``train_bn=False``; with ``train_bn=True`` torchvision's transform also draws from the global RNG.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn
from torchvision.models import detection as tvd
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

from advbench.errors import AdvbenchError
from advbench.models.detector import InputDetections

# name -> (builder, whether the model reserves label 0 for background). Faster R-CNN's
# postprocess_detections and SSD's drop class 0; RetinaNet and FCOS score every class (sigmoid heads).
_MODELS = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": (tvd.fasterrcnn_mobilenet_v3_large_320_fpn, True),
    "fasterrcnn_mobilenet_v3_large_fpn": (tvd.fasterrcnn_mobilenet_v3_large_fpn, True),
    "fasterrcnn_resnet50_fpn": (tvd.fasterrcnn_resnet50_fpn, True),
    "fasterrcnn_resnet50_fpn_v2": (tvd.fasterrcnn_resnet50_fpn_v2, True),
    "ssdlite320_mobilenet_v3_large": (tvd.ssdlite320_mobilenet_v3_large, True),
    "retinanet_resnet50_fpn": (tvd.retinanet_resnet50_fpn, False),
    "retinanet_resnet50_fpn_v2": (tvd.retinanet_resnet50_fpn_v2, False),
    "fcos_resnet50_fpn": (tvd.fcos_resnet50_fpn, False),
}
ACCEPTED_NAMES = tuple(sorted(_MODELS))

# torchvision's loss names per architecture; FCOS and RetinaNet are checked before their relatives.
_LOSS_NAMES = (
    (GeneralizedRCNN, ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")),
    (tvd.FCOS, ("classification", "bbox_regression", "bbox_ctrness")),
    (tvd.RetinaNet, ("classification", "bbox_regression")),
    (tvd.ssd.SSD, ("classification", "bbox_regression")),
)


def torchvision_detector(in_shape, n_classes: int, mean=None, std=None,
                         name: str = "fasterrcnn_mobilenet_v3_large_320_fpn", weights: str | None = None,
                         **kwargs) -> "TorchvisionDetector":
    """advbench's factory (model=torchvision_detector model.name=...): torchvision normalizes with its own ImageNet
    statistics inside the model, so the data set's mean/std are not used."""
    try:
        return build(name, n_classes, tuple(in_shape[1:]), weights, **kwargs)
    except ValueError as err:
        raise AdvbenchError(f"model.name={name}: {err}") from None


def build(name: str, n_classes: int, image_size: int | tuple[int, int], weights: str | os.PathLike | None = None,
          **kwargs) -> TorchvisionDetector:
    """Build detector ``name`` offline (random init) for ``n_classes`` classes and (H, W) images."""
    if name not in _MODELS:
        raise ValueError(f"unknown detector {name!r}; accepted names: {', '.join(ACCEPTED_NAMES)}")
    builder, background = _MODELS[name]
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    is_ssd = name.startswith("ssd")
    # torchvision's default resize would upscale small images to 320-800 px: cost without benefit,
    # and the attack's perturbation would be resampled. Make the resize an identity instead.
    size = kwargs.pop("size", (h, w)) if is_ssd else None
    if not is_ssd:
        kwargs.setdefault("min_size", min(h, w))
        kwargs.setdefault("max_size", max(h, w))
    model = builder(weights=None, weights_backbone=None, num_classes=n_classes + background, **kwargs)
    if is_ssd:
        # ssdlite320's builder hard-codes size=(320, 320) and ignores a `size` kwarg; its anchors
        # are relative to the image, so only the transform needs to change. fixed_size is (W, H).
        model.transform.min_size = (min(size),)
        model.transform.max_size = max(size)
        model.transform.fixed_size = (size[1], size[0])
    detector = TorchvisionDetector(model, n_classes, background)
    if weights is not None:
        from advbench.runtime.checkpoint import load_tensors
        state = load_tensors(Path(weights).expanduser(), f"model.weights={weights}")
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise AdvbenchError(f"model.weights={weights}: not a state dict")
        # accept both the wrapper's state dict ("model." keys) and the bare torchvision model's
        target = detector if all(k.startswith("model.") for k in state) else model
        try:
            target.load_state_dict(state)
        except RuntimeError as err:
            raise AdvbenchError(f"model.weights={weights}: does not fit {name}: "
                                f"{' '.join(str(err).split())[:200]}") from None
    return detector


class TorchvisionDetector(nn.Module):
    """A torchvision detector with advbench's label convention, eval-mode predictions and attackable losses."""

    TERMS = {
        "box": ("loss_box_reg", "loss_rpn_box_reg", "bbox_regression"),
        "obj": ("loss_objectness", "bbox_ctrness"),
        "cls": ("loss_classifier", "classification"),
    }

    def __init__(self, model: nn.Module, n_classes: int, background: bool):
        super().__init__()
        names = next((n for cls, n in _LOSS_NAMES if isinstance(model, cls)), None)
        if names is None:
            raise TypeError(f"unsupported detector type {type(model).__name__}")
        self.model = model
        self.n_classes = n_classes
        self.label_offset = int(background)
        self.loss_names = names
        self.available_terms = tuple(t for t, ns in self.TERMS.items() if set(ns) & set(names))
        # torchvision computes losses only where a module's forward branches on `training`: the
        # detector itself (losses vs detections) and, for the R-CNNs, the RPN (losses, train-time
        # top-n) and the RoI heads (proposal sampling, losses). The GeneralizedRCNNTransform is left
        # out on purpose: in train mode it only draws a random min_size (multi-scale augmentation)
        # and skips postprocessing, while it resizes targets in either mode, so eval keeps the
        # attack's loss at the deterministic inference scale. BatchNorm and Dropout stay in eval.
        self.loss_modules = tuple([model] + [m for m in model.modules()
                                             if isinstance(m, (RegionProposalNetwork, RoIHeads))])

    def forward(self, x: torch.Tensor) -> InputDetections:
        """The images, to be scored by ``loss`` (terms) or ``predictions`` (detect) as the detection task asks."""
        return InputDetections(x, self)

    def detect(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Eval-mode predictions for images ``x``; differentiable w.r.t. ``x`` where torchvision is (scores)."""
        with self._modes(()):
            preds = self.model(self._images(x))
        return [{"boxes": p["boxes"], "scores": p["scores"], "labels": p["labels"] - self.label_offset}
                for p in preds]

    def losses(self, x: torch.Tensor, targets: list[dict[str, torch.Tensor]], train_bn: bool = False,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """torchvision's loss dict (batch means); ``train_bn=True`` for a training update, else BN and dropout stay
        in eval."""
        if len(targets) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} images but {len(targets)} targets")
        with self._modes(self.model.modules() if train_bn else self.loss_modules), self._rng(generator, x.device):
            return self.model(self._images(x), self._targets(targets, x.device))

    def terms(self, x: torch.Tensor, targets: list[dict[str, torch.Tensor]], train_bn: bool = False,
              per_image: bool = False, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """advbench's loss terms (those of box/obj/cls the model has): scalars, or (N,) with ``per_image``."""
        # per_image runs each image alone: N batch-1 passes instead of one batch-N pass (the backward
        # costs likewise). SSDlite's 1x1 extra-layer BatchNorm cannot train on one image, so
        # per_image with train_bn=True fails there; the attack's train_bn=False works.
        if per_image:
            rows = [self.terms(x[i:i + 1], [targets[i]], train_bn, generator=generator) for i in range(x.shape[0])]
            return {t: torch.stack([r[t] for r in rows]) for t in self.available_terms}
        loss = self.losses(x, targets, train_bn, generator)
        return {t: sum(loss[n] for n in self.TERMS[t] if n in loss) for t in self.available_terms}

    def _images(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images shaped (N, 1 or 3, H, W), got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return list(x.unbind(0))

    def _targets(self, targets, device) -> list[dict[str, torch.Tensor]]:
        # fresh dicts: the caller's targets are neither mutated nor shifted twice
        return [{"boxes": t["boxes"].to(device, torch.float32).reshape(-1, 4),
                 "labels": t["labels"].to(device, torch.int64) + self.label_offset} for t in targets]

    @contextlib.contextmanager
    def _modes(self, training: Iterable[nn.Module]) -> Iterator[None]:
        # every sub-module's own flag is restored, not just the root's: callers may have deliberately
        # mixed modes (e.g. a frozen, eval-mode backbone inside a training model)
        saved = [(m, m.training) for m in self.model.modules()]
        try:
            for m, _ in saved:
                m.training = False
            for m in training:
                m.training = True
            yield
        finally:
            for m, flag in saved:
                m.training = flag

    @staticmethod
    @contextlib.contextmanager
    def _rng(generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
        if generator is None:
            yield
            return
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        cuda = ([device.index if device.index is not None else torch.cuda.current_device()]
                if device.type == "cuda" else [])
        with torch.random.fork_rng(devices=cuda):
            torch.default_generator.manual_seed(seed)
            for d in cuda:
                with torch.cuda.device(d):
                    torch.cuda.manual_seed(seed)
            yield
