"""Models advbench ships. Image models take [0,1] pixels and normalize in their first layer; text models take
token ids and expose ``embedding`` and ``classify(embeddings)``; detectors return outputs with ``loss(targets)``
and ``predictions()`` (models/detector.py). Config ``_target_``s name them from here."""
from advbench.models.image import Normalize, PreActBlock, PreActResNet18, mlp, small_cnn
from advbench.models.text import TextCNN, TransformerClassifier
from advbench.models.torchvision_detectors import torchvision_detector
from advbench.models.yolo_tiny import YoloTiny

__all__ = ["Normalize", "PreActBlock", "PreActResNet18", "TextCNN", "TransformerClassifier", "YoloTiny", "mlp",
           "small_cnn", "torchvision_detector"]
