"""Models advbench ships. Image models take [0,1] pixels and normalize in their first layer; text models take
token ids and expose ``embedding`` and ``classify(embeddings)``; detectors return outputs with ``loss(targets)``
and ``predictions()`` (models/detector.py). Config ``_target_``s name them from here."""
import importlib

from advbench.models.image import Normalize, PreActBlock, PreActResNet18, mlp, small_cnn
from advbench.models.text import TextCNN, TransformerClassifier

# The detectors import torchvision (about 2 s, torch._dynamo with it): loaded when first named, so that a run
# that does not use them starts without it.
_LAZY = {"torchvision_detector": "advbench.models.torchvision_detectors", "YoloTiny": "advbench.models.yolo_tiny"}


def __getattr__(name: str):
    """A detector's class or builder, imported on first use (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["Normalize", "PreActBlock", "PreActResNet18", "TextCNN", "TransformerClassifier", "YoloTiny", "mlp",
           "small_cnn", "torchvision_detector"]
