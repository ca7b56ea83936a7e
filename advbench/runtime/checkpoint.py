"""Checkpoints: the model's state dict with the run's plain config, saved and loaded with ``weights_only=True``."""
import inspect
import pickle
import re
import zipfile
from pathlib import Path

import torch
from hydra._internal.utils import _locate
from hydra.utils import instantiate

from advbench.errors import AdvbenchError, unimportable
from advbench.runtime.outputs import atomic_write


def save_checkpoint(path: Path, model: torch.nn.Module, config: dict, **extra) -> None:
    """Save the state dict with the plain-container config, loadable with ``torch.load(weights_only=True)``."""
    state = {"state_dict": model.state_dict(), "config": config, **extra}
    atomic_write(path, lambda f: torch.save(state, f))


def resolve(path: str) -> Path:
    """The checkpoint file: ``path`` itself, or ``model.pt`` in a run directory."""
    if path is None:
        raise AdvbenchError("task=eval needs checkpoint=<run directory, model.pt, a state dict or a TorchScript file> "
                            "(or a model that loads its own weights: model.weights=..., model=robustbench)")
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "model.pt"
    if not p.is_file():
        raise AdvbenchError(f"checkpoint={path}: no such file or run directory (a run directory holds model.pt)")
    return p


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (torch.jit.save): it holds the model's code as TorchScript."""
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_checkpoint(path: str) -> dict:
    """Load a checkpoint safely: an advbench one ({state_dict, config}), a plain state dict (config: None; the
    command line's model builds it), or a TorchScript archive ({"torchscript": module}). Every failure is a
    one-line AdvbenchError naming ``checkpoint``."""
    p = resolve(path)
    if not zipfile.is_zipfile(p):  # torch.save has written zip archives since torch 1.6
        raise AdvbenchError(f"checkpoint={path}: not a readable torch file (corrupt, truncated or another format)")
    if _is_torchscript(p):
        try:  # TorchScript runs in torch's own interpreter: no Python pickle is loaded
            return {"torchscript": torch.jit.load(str(p), map_location="cpu"), "state_dict": None, "config": None}
        except (RuntimeError, OSError, ValueError) as err:
            raise AdvbenchError(f"checkpoint={path}: not a readable TorchScript file ({type(err).__name__})") from None
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = next((line.split(" was not an allowed")[0].strip() for line in str(err).splitlines()
                       if "Unsupported global" in line), "it holds objects other than tensors and plain containers")
        raise AdvbenchError(f"checkpoint={path}: refused by torch.load(weights_only=True): {reason}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise AdvbenchError(f"checkpoint={path}: not a readable torch file ({type(err).__name__})") from None
    if isinstance(state, dict) and {"state_dict", "config"} <= set(state):
        return state
    weights = state.get("state_dict", state) if isinstance(state, dict) else None
    if isinstance(weights, dict) and weights and all(torch.is_tensor(v) for v in weights.values()):
        return {"state_dict": weights, "config": None}  # a plain state dict: the command line says what it is
    raise AdvbenchError(f"checkpoint={path}: neither an advbench checkpoint (a dict with 'state_dict' and 'config'), "
                        "a state dict of tensors, nor a TorchScript file")


def _unexpected_keyword(err: Exception) -> str | None:
    match = re.search(r"unexpected keyword argument '(\w+)'", str(err))
    return match.group(1) if match else None


def build_model(model_cfg, data, dataset_cfg, task, state_dict=None) -> torch.nn.Module:
    """Instantiate ``model_cfg`` for ``data`` (posing ``task``); with ``state_dict``, load it or say why it does
    not fit."""
    data_kwargs = {"in_shape": data.shape, "n_classes": data.n_classes, **data.model_kwargs(dataset_cfg)}
    target = str(model_cfg._target_)
    try:
        model = instantiate(model_cfg, **data_kwargs)
    except Exception as err:  # instantiate wraps the factory's TypeError (and its AdvbenchErrors)
        if isinstance(err.__cause__, AdvbenchError):
            raise err.__cause__ from None
        if unimportable(err):
            raise unimportable(err) from None
        keyword = _unexpected_keyword(err)
        if keyword is None:
            raise
        if keyword not in data_kwargs:
            accepted = [p for p in _parameters(target) if p not in data_kwargs]
            raise AdvbenchError(f"model.{keyword} is not an argument of {target}: it takes "
                                f"{', '.join(accepted) or 'no other arguments'}") from None
        raise AdvbenchError(f"model={target.rsplit('.', 1)[-1]} does not take {task.name} data "
                            f"(dataset={dataset_cfg.name}): use model={task.models}") from None
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as err:
            detail = " ".join(str(err).split())[:300]
            raise AdvbenchError(f"checkpoint: its weights do not fit model={target} built from its "
                                f"config on dataset={dataset_cfg.name}: {detail}") from None
    return model


def _parameters(target: str) -> list:
    """The keyword parameters of the callable ``target`` names (empty if it cannot be inspected)."""
    try:
        fn = _locate(target)
        fn = fn.__init__ if inspect.isclass(fn) else fn
        return [p for p in inspect.signature(fn).parameters if p != "self"]
    except (ImportError, AttributeError, ValueError, TypeError):
        return []
