"""Segmentation models taking [0,1] images and returning (N, classes, H, W) logits: a small U-Net written here
(trainable on a CPU in minutes), and torchvision's FCN, DeepLabV3 and LR-ASPP built offline."""
import torch
from torch import nn

from advbench.errors import AdvbenchError
from advbench.models.external import _load_weights, adapt_channels
from advbench.models.image import Normalize


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNetTiny(nn.Module):
    """U-Net (Ronneberger et al. 2015) with ``depth`` down/up levels of ``width * 2^level`` channels; sides
    divisible by 2^depth."""

    def __init__(self, in_shape, n_classes: int, mean, std, width: int = 16, depth: int = 2):
        super().__init__()
        if in_shape[-1] % 2 ** depth or in_shape[-2] % 2 ** depth:
            raise AdvbenchError(f"model=unet_tiny: image sides {tuple(in_shape[-2:])} must be divisible by "
                                f"2^model.depth = {2 ** depth}")
        self.normalize = Normalize(mean, std)
        widths = [width * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(in_shape[0], widths[0])] +
                                  [_block(widths[i], widths[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth)])
        self.merge = nn.ModuleList([_block(2 * widths[i], widths[i]) for i in range(depth)])
        self.head = nn.Conv2d(widths[0], n_classes, 1)

    def forward(self, x):
        x = self.normalize(x)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = self.merge[i](torch.cat([self.up[i](x), skips[i]], 1))
        return self.head(x)


class _OutOnly(nn.Module):
    """A torchvision segmentation model's ``out`` logits (its dict's auxiliary head is not built)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


SEGMENTERS = ("fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "fcn_resnet101",
              "deeplabv3_resnet50", "deeplabv3_resnet101")


def torchvision_segmenter(in_shape, n_classes: int, mean, std, name: str = "lraspp_mobilenet_v3_large",
                          weights: str | None = None) -> nn.Module:
    """torchvision.models.segmentation's ``name`` built offline (weights=None, weights_backbone=None,
    aux_loss=False), with the data's input channels; ``weights`` a local state dict; Normalize in front."""
    import torchvision
    if name not in SEGMENTERS:
        raise AdvbenchError(f"model.name={name} is not a torchvision segmentation model: {', '.join(SEGMENTERS)}")
    kwargs = {} if name.startswith("lraspp") else {"aux_loss": False}
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=n_classes, **kwargs)
    model = _load_weights(adapt_channels(model, in_shape[0]), weights, f"torchvision {name}")
    return nn.Sequential(Normalize(mean, std), _OutOnly(model))
