"""What a data set loader returns."""
from dataclasses import dataclass, field


@dataclass
class Source:
    """The splits as loaded (each an (inputs, targets) pair), class names, and what some data sets add."""

    train: tuple
    test: tuple
    classes: list | None = None
    vocab: list | None = None  # text: the training split's vocabulary
    special: list = field(default_factory=list)  # text: ids of special tokens ([CLS], [SEP]) attacks never move
    val: tuple | None = None  # a validation split of the data set's own (else one is carved from train)
