"""Checkpoints: the model's state dict with the run's plain config, saved and loaded with ``weights_only=True``."""
import inspect
import logging
import pickle
import re
import zipfile
from pathlib import Path

import torch
from hydra._internal.utils import _locate
from hydra.utils import instantiate

from advbench.errors import AdvbenchError, unimportable
from advbench.runtime.outputs import atomic_write
from advbench.runtime.signals import deferred

log = logging.getLogger(__name__)


def save_checkpoint(path: Path, model: torch.nn.Module, config: dict, **extra) -> None:
    """Save the state dict with the plain-container config, loadable with ``torch.load(weights_only=True)``."""
    state = {"state_dict": model.state_dict(), "config": config, **extra}
    # torch.save's zip writer calls back into the Python file; cut short by a Ctrl-C it would finish the archive
    # in its destructor, after the file is closed, and abort the process: the signal waits for the file instead.
    with deferred():
        atomic_write(path, lambda f: torch.save(state, f))


def resolve(path: str) -> Path:
    """The checkpoint file: ``path`` itself, or ``model.pt`` in a run directory."""
    if path is None:
        raise AdvbenchError("job=eval needs checkpoint=<run directory, model.pt, a state dict or a TorchScript file> "
                            "(or a model that loads its own weights: model.weights=..., model=robustbench)")
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "model.pt"
    if not p.is_file():
        raise AdvbenchError(f"checkpoint={path}: no such file or run directory (a run directory holds model.pt)")
    return p


# Keys whose value is a local folder or a hub id (``org/name``): given relatively, model.pt stores the folder whole.
FOLDER_KEYS = (("model", "name_or_path"), ("model", "tokenizer"), ("dataset", "tokenizer"))


def with_whole_folders(config: dict) -> dict:
    """``config`` (changed in place) with the folders ``FOLDER_KEYS`` name relatively made absolute: model.pt is
    loaded from anywhere, and there a relative ``data/bert`` that is no folder would be taken for a hub id."""
    for section, key in FOLDER_KEYS:
        value = (config.get(section) or {}).get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute() \
                and Path(value).expanduser().is_dir():
            config[section][key] = str(Path(value).expanduser().resolve())
    return config


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (torch.jit.save): it holds the model's code as TorchScript."""
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_tensors(path, named: str):
    """``torch.load(path, weights_only=True)``: a stored file is data, never code. A missing or unreadable file,
    or a pickle of anything but tensors and plain containers, is a one-line error beginning with ``named`` (the key
    and value that gave the path)."""
    if not Path(path).is_file():
        raise AdvbenchError(f"{named}: no such file (a state dict saved with torch.save)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = next((line.split(" was not an allowed")[0].strip() for line in str(err).splitlines()
                       if "Unsupported global" in line), "it holds objects other than tensors and plain containers")
        raise AdvbenchError(f"{named}: refused by torch.load(weights_only=True): {reason}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as err:
        raise AdvbenchError(f"{named}: not a readable torch file ({type(err).__name__})") from None


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
    state = load_tensors(p, f"checkpoint={path}")
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


def data_kwargs(data, dataset_cfg) -> dict:
    """What a model factory is told about the data: input shape, classes, normalization or vocabulary size."""
    return {"in_shape": list(data.shape), "n_classes": data.n_classes, **data.model_kwargs(dataset_cfg)}


def build_model(model_cfg, data, dataset_cfg, task, state_dict=None, inputs: dict | None = None) -> torch.nn.Module:
    """Instantiate ``model_cfg`` for ``data`` (posing ``task``), or for the stored ``inputs`` (data_kwargs) where
    no data is loaded; with ``state_dict``, load it or say why it does not fit."""
    given = dict(inputs) if inputs else data_kwargs(data, dataset_cfg)
    given["in_shape"] = tuple(given["in_shape"])
    target = str(model_cfg._target_)
    try:
        model = instantiate(model_cfg, **given)
    except Exception as err:  # instantiate wraps the factory's TypeError (and its AdvbenchErrors)
        if isinstance(err.__cause__, AdvbenchError):
            raise err.__cause__ from None
        if unimportable(err):
            raise unimportable(err) from None
        keyword = _unexpected_keyword(err)
        if keyword is None:  # the factory refused its arguments (a negative width, a wrong type...)
            raise AdvbenchError(f"model={target.rsplit('.', 1)[-1]} cannot be built from its arguments "
                                f"({type(err.__cause__ or err).__name__}: "
                                f"{' '.join(str(err.__cause__ or err).split())[:200]})") from None
        if keyword not in given:
            accepted = [p for p in _parameters(target) if p not in given]
            raise AdvbenchError(f"model.{keyword} is not an argument of {target}: it takes "
                                f"{', '.join(accepted) or 'no other arguments'}") from None
        raise AdvbenchError(f"model={target.rsplit('.', 1)[-1]} does not take {task.name} data "
                            f"(dataset={dataset_cfg.name}): use model={', '.join(task.models)}") from None
    if state_dict is not None:
        load_weights(model, state_dict, f"model={target} built for dataset={dataset_cfg.name}")
    return model


def _shapes(module: torch.nn.Module, state: dict) -> list:
    """'name (file shape) vs (model shape)' of each tensor whose shape differs."""
    own = module.state_dict()
    return [f"{k} {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model" for k in own
            if k in state and tuple(state[k].shape) != tuple(own[k].shape)]


def load_weights(model: torch.nn.Module, state: dict, what: str) -> None:
    """Load ``state`` into ``model``, or into the module inside it that holds every parameter and whose names the
    state holds exactly (a plain state dict of the network advbench wraps as ``Sequential(Normalize, net)``: the
    wrapper adds buffers only); else one line saying why not."""
    names, size = set(state), sum(p.numel() for p in model.parameters())
    inner = [(name, m) for name, m in model.named_modules()
             if set(m.state_dict()) == names and sum(p.numel() for p in m.parameters()) == size]
    if not inner:
        own = set(model.state_dict())
        missing, unexpected = sorted(own - names), sorted(names - own)
        listed = lambda keys: ", ".join(keys[:3]) + (f" (+{len(keys) - 3})" if len(keys) > 3 else "")  # noqa: E731
        raise AdvbenchError(f"checkpoint: its weights do not fit {what}: missing {listed(missing) or 'none'}; "
                            f"unexpected {listed(unexpected) or 'none'} (nor do they fit the network inside it)")
    name, target = inner[0]
    shapes = _shapes(target, state)
    if shapes:
        raise AdvbenchError(f"checkpoint: its weights do not fit {what}: {shapes[0]}"
                            f"{f' (and {len(shapes) - 1} more)' if len(shapes) > 1 else ''}; the model is built "
                            "with the data set's classes and channels (a model option's arguments set the rest)")
    target.load_state_dict(state)
    if name:
        log.info("checkpoint: a state dict of the network alone, loaded into module %s of the model (the data set's "
                 "normalization in front is advbench's)", name)


def _parameters(target: str) -> list:
    """The keyword parameters of the callable ``target`` names (empty if it cannot be inspected)."""
    try:
        fn = _locate(target)
        fn = fn.__init__ if inspect.isclass(fn) else fn
        return [p for p in inspect.signature(fn).parameters if p != "self"]
    except (ImportError, AttributeError, ValueError, TypeError):
        return []


def load_stored(path: str, overrides: dict | None = None) -> tuple:
    """(config, state) of an advbench checkpoint, its config checked by the stored-config rules
    (runtime/stored.py) and typed by the schema; ``overrides`` (key -> value) play the command line's part."""
    from omegaconf import OmegaConf

    from advbench.config import Config
    from advbench.runtime.stored import check_state, check_stored, complete
    overrides, source = dict(overrides or {}), f"checkpoint={path}"
    state = load_checkpoint(path)
    if state["config"] is None:
        raise AdvbenchError(f"{source}: a plain state dict or TorchScript file holds no config: build your model and "
                            "call model.load_state_dict(torch.load(path, weights_only=True))")
    stored = check_stored(state["config"], source, {k: str(v) for k, v in overrides.items()}, {})
    check_state(state, source)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), stored)
        for key, value in overrides.items():
            OmegaConf.update(cfg, key, value, merge=False)
    except Exception as err:  # OmegaConf's validation: an unknown key or a wrong type
        raise AdvbenchError(f"{source}: refused, its config does not fit advbench's schema: "
                            f"{' '.join(str(err).split())[:200]}") from None
    return complete(cfg, source), state


def load_model(path: str, overrides: dict | None = None, device=None, data=None) -> torch.nn.Module:
    """The model of an advbench checkpoint (a run directory, model.pt, best.pt or last.pt), rebuilt from its config
    by the stored-config rules and returned in eval mode; ``overrides`` (key -> value) play the command line's
    part, e.g. ``{"model.trust_pickle": True}`` for a file you trust. A TorchScript file is returned as it is."""
    from advbench.data import load_data, model_tokenizer
    from advbench.tasks import task_class, task_of
    if zipfile.is_zipfile(resolve(path)) and _is_torchscript(resolve(path)):
        return load_checkpoint(path)["torchscript"].to(device or "cpu").eval()
    cfg, state = load_stored(path, overrides)
    inputs = state.get("data_kwargs") if data is None else None
    if data is None and inputs is None:  # a checkpoint of an older advbench: the data says what the model takes
        data = load_data(model_tokenizer(cfg.dataset, cfg.model))
    task = task_class(task_of(cfg.dataset)).configured()
    model = build_model(cfg.model, data, cfg.dataset, task, state["state_dict"], inputs)
    return model.to(device or "cpu").eval()
