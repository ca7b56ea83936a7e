"""Image classification: labels in, logits out; accuracy under attack. Its data sets are the core's image
readers (data/images.py in memory, data/external.py streamed)."""
from advbench.data import external, images
from advbench.tasks.classification.task import Classification
from advbench.tasks.registry import register

register("classification", Classification, {
    "fashion_mnist": images.fashion_mnist,
    "digits": images.digits,
    "synthetic": images.synthetic,
    "mnist": lambda cfg: images.from_torchvision("MNIST", cfg),
    "cifar10": lambda cfg: images.from_torchvision("CIFAR10", cfg),
    # streamed through a DataLoader (data/streams.py): the users' own images, at any scale
    "image_folder": external.image_folder,
    "torchvision": external.torchvision_sets,
    "custom": external.custom,
})

__all__ = ["Classification"]
