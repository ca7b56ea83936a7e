"""Models from elsewhere, with the data set's normalization placed in front so attacks stay in [0,1] pixel space:
any torchvision or timm classifier by name, a user's own ``nn.Module`` by ``_target_``, a RobustBench model from
its local model directory."""
import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from advbench.errors import AdvbenchError
from advbench.models.image import Normalize

log = logging.getLogger(__name__)


def _first_conv(module: nn.Module) -> tuple:
    """(parent, attribute name, conv) of the first Conv2d, to adapt its input channels."""
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                return parent, name, child
    return None, None, None


def adapt_channels(model: nn.Module, channels: int) -> nn.Module:
    """Give the model's first convolution ``channels`` inputs (grey images into an RGB architecture): its weights
    are averaged over the original channels, so a pretrained filter keeps its response to luminance."""
    parent, name, conv = _first_conv(model)
    if conv is None or conv.in_channels == channels:
        return model
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(conv.weight.mean(1, keepdim=True).expand(-1, channels, -1, -1))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    setattr(parent, name, new)
    return model


def _load_weights(model: nn.Module, weights: str | None, what: str) -> nn.Module:
    if weights:
        from advbench.runtime.checkpoint import load_tensors
        state = load_tensors(Path(weights).expanduser(), f"model.weights={weights}")
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise AdvbenchError(f"model.weights={weights}: does not fit {what}: "
                                f"{' '.join(str(err).split())[:200]}") from None
    return model


# torchvision's other model families, and the model option that builds each (None: none does)
_FAMILIES = {"detection": "torchvision_detector", "segmentation": "torchvision_segmenter", "video": None,
             "optical_flow": None, "quantization": None}


def check_torchvision_name(name) -> None:
    """``name`` is one of torchvision's classifiers: a detection architecture's name would be built with its
    ImageNet backbone weights, which torchvision downloads."""
    import torchvision
    classifiers = torchvision.models.list_models(torchvision.models)
    if name in classifiers:
        return
    for family, option in _FAMILIES.items():
        module = getattr(torchvision.models, family, None)
        if module is not None and name in torchvision.models.list_models(module):
            instead = f": use model={option} model.name={name}" if option else ""
            raise AdvbenchError(f"model.name={name} is a torchvision {family} model, not a classifier "
                                f"(model=torchvision builds classifiers){instead}")
    options = ", ".join(sorted(classifiers)[:12])
    raise AdvbenchError(f"model.name={name} is not a torchvision classifier: e.g. {options}...")


def check_model_config(model_cfg) -> None:
    """What can be told of a model config before the data is loaded: a torchvision classifier's name."""
    if str(model_cfg.get("_target_")) == f"{__name__}.torchvision_classifier":
        check_torchvision_name(model_cfg.get("name", "resnet18"))


def torchvision_classifier(in_shape, n_classes: int, mean, std, name: str = "resnet18", weights: str | None = None,
                           **kwargs) -> nn.Module:
    """Any classifier of torchvision.models by ``name`` (resnet18, vit_b_16...), built offline with ``n_classes``
    outputs and the data's input channels, ``weights`` a local state dict; Normalize(mean, std) in front."""
    import torchvision
    check_torchvision_name(name)
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=n_classes, **kwargs)
    except TypeError as err:  # an argument this architecture does not take
        raise AdvbenchError(f"{', '.join('model.' + k for k in sorted(kwargs))}: torchvision's {name} does not take it "
                            f"({' '.join(str(err).split())[:160]})") from None
    model = adapt_channels(model, in_shape[0])
    _takes(model, in_shape, f"model=torchvision model.name={name}",
           f"+model.image_size={in_shape[-1]} (a ViT's; its patch size must divide it)")
    model = _load_weights(model, weights, f"torchvision {name}")
    return nn.Sequential(Normalize(mean, std), model)


# timm.create_model's own arguments: advbench sets them (weights come from model.weights, a local file, never a
# download or a pickle), so model.kwargs may not
_TIMM_OWN = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir", "num_classes",
             "in_chans")


def timm_classifier(in_shape, n_classes: int, mean, std, name: str = "resnet18", weights: str | None = None,
                    kwargs: dict | None = None, **extra) -> nn.Module:
    """Any timm model by ``name`` (pip install 'advbench[timm]'), built offline with ``n_classes`` outputs and the
    data's input channels (timm's in_chans), ``kwargs`` the model's own arguments (a ViT's ``img_size``,
    ``patch_size``...), ``weights`` a local state dict; Normalize(mean, std) in front. A model that does not take
    the data's image size is refused in one line naming ``model.kwargs``."""
    try:
        import timm
    except ImportError:
        raise AdvbenchError("model=timm needs the timm package: pip install 'advbench[timm]'") from None
    if not timm.is_model(name):
        raise AdvbenchError(f"model.name={name} is not a timm model (timm.list_models() lists them)")
    given = {**(OmegaConf.to_container(kwargs) if OmegaConf.is_config(kwargs) else dict(kwargs or {})), **extra}
    own = [key for key in given if key in _TIMM_OWN]
    if own:
        raise AdvbenchError(f"model.kwargs.{own[0]}: advbench sets it (classes and channels from the data, weights "
                            "from model.weights=<local state dict>); model.kwargs holds the model's own arguments")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=n_classes, in_chans=in_shape[0], **given)
    except TypeError as err:  # an argument this architecture does not take
        raise AdvbenchError(f"model.kwargs={given}: timm's {name} does not take them "
                            f"({' '.join(str(err).split())[:160]})") from None
    _takes(model, in_shape, f"model=timm model.name={name}", f"+model.kwargs.img_size={in_shape[-1]} (a ViT's; and "
           "+model.kwargs.patch_size= no larger than the image)")
    return nn.Sequential(Normalize(mean, std), _load_weights(model, weights, f"timm {name}"))


def _takes(model: nn.Module, in_shape, what: str, example: str) -> None:
    """One forward of a single blank image: a model built for another input size (a ViT's position table, patch
    grid) fails here in one line naming the key to set, not in a traceback mid-attack."""
    size = "x".join(str(s) for s in in_shape)
    was = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *in_shape))
    except (AssertionError, RuntimeError, ValueError) as err:
        reason = " ".join(str(err).split())[:160]
        raise AdvbenchError(f"{what} does not take the data's {size} images ({reason}): set its size arguments, "
                            f"e.g. {example}") from None
    finally:
        model.train(was)


def module(in_shape, n_classes: int, mean, std, module, normalize: bool = True) -> nn.Module:
    """A user's own ``nn.Module`` (``model.module``: its ``_target_`` and its own keyword arguments, none of
    advbench's; Hydra builds it before this call), with the data set's normalization in front unless
    ``normalize=false``."""
    built = module if isinstance(module, nn.Module) else instantiate(module)
    if not isinstance(built, nn.Module):
        raise AdvbenchError(f"model.module._target_={module.get('_target_')} built a {type(built).__name__}, not an "
                            "nn.Module")
    return nn.Sequential(Normalize(mean, std), built) if normalize else built
