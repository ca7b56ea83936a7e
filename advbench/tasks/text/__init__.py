"""Text classification: token ids in, logits out; attacks move the embeddings (data.py reads the texts, tokens.py
encodes them, saliency.py draws token maps)."""
from advbench.tasks.registry import register
from advbench.tasks.text import data
from advbench.tasks.text.task import TextClassification

register("text", TextClassification, {name: data.encoded(loader) for name, loader in data.RAW.items()})

__all__ = ["TextClassification"]
