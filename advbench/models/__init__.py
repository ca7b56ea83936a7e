"""Models advbench ships. Image models take [0,1] pixels and normalize in their first layer; text models take
token ids and expose ``embedding`` and ``classify(embeddings)``. Config ``_target_``s name them from here."""
from advbench.models.image import Normalize, PreActBlock, PreActResNet18, mlp, small_cnn
from advbench.models.text import TextCNN, TransformerClassifier

__all__ = ["Normalize", "PreActBlock", "PreActResNet18", "TextCNN", "TransformerClassifier", "mlp", "small_cnn"]
