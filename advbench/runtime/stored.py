"""A stored config (a checkpoint's ``config``, a ``last.pt``'s) is data: it is read as plain values, never resolved
and never instantiated as it stands. It is checked here by rule, before anything is built from it:

- every key and value is a plain value (None, bool, int, float, str, list, dict); no ``${...}`` anywhere, since
  OmegaConf would resolve it (``${oc.create:{_target_: ...}}`` builds an object) and a string carries no
  ``_target_`` until then;
- a Hydra directive (``_target_``, ``_args_``, ``_partial_``, ...) is accepted only where advbench's registry (the
  shipped model and optimizer options) puts that very value, or where this command line gives it again;
- the model section holds only the keys of the shipped option (or its factory's named parameters), each of the
  type the shipped option gives it, finite where it is a number: keyword arguments a factory passes on unread (a
  Hugging Face model's ``from_pretrained`` options) must come from the command line;
- a permission (a key named ``trust_*``, ``allow_*`` or ``download``) is the command line's alone: a stored one is
  switched off with a warning, since a file must not grant itself the right to run code or reach the network;
- where results go and how jobs launch (``logger``, ``hydra``) is the command line's: stored sections are ignored,
  with a warning when they asked for something.
"""
import inspect
import logging
import math
import re

from advbench.errors import AdvbenchError

log = logging.getLogger(__name__)

DIRECTIVE = re.compile(r"^_[a-z]+_$")  # Hydra's instantiate keys: _target_, _args_, _partial_, _recursive_...
PERMISSION = re.compile(r"^(trust\w*|allow_\w+|download)$")
COMMAND_LINE_SECTIONS = ("logger", "hydra")
SCALARS = (type(None), bool, int, float, str)


class StoredConfigRefused(AdvbenchError):
    """A stored config asked for something a file may not decide."""


def _walk(node, path=""):
    """(path, key, value) of every entry of a plain container, depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        here = f"{path}[{key}]" if isinstance(node, list) else f"{path}.{key}" if path else str(key)
        yield here, key, value
        yield from _walk(value, here)


def _plain(stored: dict, source: str) -> None:
    """Refuse anything but plain values, and any interpolation, anywhere."""
    for path, key, value in _walk(stored):
        if not isinstance(key, (str, int)) or "${" in str(key):
            raise StoredConfigRefused(f"{source}: its config has a key {key!r} that is not a plain name; refused")
        if not isinstance(value, (*SCALARS, list, dict)):
            raise StoredConfigRefused(f"{source}: its config holds a {type(value).__name__} at {path}, not a plain "
                                      "value; refused")
        if isinstance(value, str) and "${" in value:
            raise StoredConfigRefused(f"{source}: its config holds an interpolation at {path} ({value[:60]!r}); "
                                      "refused: a stored config is data and is never resolved")
        if isinstance(value, float) and not math.isfinite(value):
            raise StoredConfigRefused(f"{source}: its config holds {value} at {path}; refused")


def _directives(stored: dict, source: str, given: dict, registry: dict) -> None:
    """Every ``_x_`` key must carry the registry's value at its path, or the one this command line gives."""
    for path, key, value in _walk(stored):
        if not (isinstance(key, str) and DIRECTIVE.match(key)):
            continue
        allowed = registry.get(path, set()) | ({given[path]} if path in given else set())
        if str(value) not in {str(a) for a in allowed}:
            hint = (f"; if you trust it, give {path}={value} on the command line" if key == "_target_" else "")
            raise StoredConfigRefused(f"{source}: its config asks for {path}={value}, which is not an option "
                                      f"advbench ships; refused (a stored config is data, not code){hint}")


def _same_type(value, default) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, type(default))
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (int, str)):
        return type(value) is type(default)
    if isinstance(default, list):
        return isinstance(value, list) and all(isinstance(v, SCALARS) for v in value)
    if isinstance(default, dict):
        return isinstance(value, dict)
    return isinstance(value, SCALARS) or (isinstance(value, list) and all(isinstance(v, SCALARS) for v in value))


def _model_keys(model: dict, source: str, given: dict, options: dict) -> None:
    """The model section: the keys of the shipped option with this ``_target_``, each of that option's type."""
    target = model.get("_target_")
    shipped = [yaml for yaml in options.values() if yaml.get("_target_") == target]
    if not shipped:
        return  # a factory this command line named again: the user vouches for its arguments
    defaults = {k: v for yaml in shipped for k, v in yaml.items()}
    named = _named_parameters(target)
    for key, value in model.items():
        if key in defaults or key in named:
            default = defaults.get(key)
            if isinstance(default, str) and "${" in default:
                default = None  # the shipped option interpolates it: its type is whatever it resolved to
            if _same_type(value, default) or f"model.{key}" in given:
                continue
            raise StoredConfigRefused(f"{source}: its config has model.{key}={value!r}, not a "
                                      f"{type(default).__name__} as model={_option(options, target)} takes; refused")
        if f"model.{key}" in given:
            continue  # a key the command line gives is the user's
        raise StoredConfigRefused(f"{source}: its config has model.{key}, which model={_option(options, target)} "
                                  f"does not take from a stored config; refused (give model.{key} on the command "
                                  "line if you mean it)")


def _option(options: dict, target) -> str:
    return next((name for name, yaml in options.items() if yaml.get("_target_") == target), str(target))


def _named_parameters(target: str) -> set:
    """The named keyword parameters of the factory ``target`` (not its ``**kwargs``)."""
    from hydra._internal.utils import _locate
    try:
        fn = _locate(str(target))
        fn = fn.__init__ if inspect.isclass(fn) else fn
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds} - {"self"}
    except (ImportError, AttributeError, ValueError, TypeError):
        return set()


def _permissions(stored: dict, source: str, given: dict) -> None:
    """Switch off every permission the file grants itself; the command line's stand."""
    for path, key, value in list(_walk(stored)):
        if isinstance(key, str) and PERMISSION.match(key) and value and path not in given:
            parent = stored
            for part in path.split(".")[:-1]:
                parent = parent[part]
            parent[key] = False
            log.warning("%s: its config sets %s=%s; ignored: a permission comes from the command line only "
                        "(give %s=%s there if you trust the file)", source, path, value, path, value)


def _sections(stored: dict, source: str, command_line_cfg: dict) -> None:
    """Replace the stored trackers and Hydra settings with this command line's."""
    for section in COMMAND_LINE_SECTIONS:
        if section not in stored:
            continue
        theirs, ours = stored.pop(section), command_line_cfg.get(section)
        asked = theirs.get("trackers") if section == "logger" and isinstance(theirs, dict) else theirs
        if asked and theirs != ours:
            log.warning("%s: its config's %s section is ignored: where results go is this command line's choice",
                        source, section)
        if ours is not None:
            stored[section] = ours


def shipped_options(group: str) -> dict:
    """option -> its YAML (plain) for every option of config group ``group`` that advbench ships."""
    import yaml

    from advbench.runtime.rundir import CONF_DIR
    return {p.stem: yaml.safe_load(p.read_text()) or {} for p in sorted((CONF_DIR / group).glob("*.yaml"))}


def registry() -> dict:
    """path -> the values advbench's shipped model and optimizer options give each Hydra directive there."""
    from advbench.run_config import LEGACY_TARGETS
    found = {"model._target_": set(LEGACY_TARGETS)}
    for group in ("model", "optimizer"):
        for option in shipped_options(group).values():
            for path, key, value in _walk(option, group):
                if isinstance(key, str) and DIRECTIVE.match(key):
                    found.setdefault(path, set()).add(value)
    return found


def check_stored(stored, source: str, given: dict, command_line_cfg: dict) -> dict:
    """``stored`` made safe to build from, or a one-line refusal: see the module's rules.

    ``given``: key -> value text of this command line's overrides; ``command_line_cfg``: its config, plain.
    """
    options = shipped_options("model")
    if not isinstance(stored, dict):
        raise StoredConfigRefused(f"{source}: its config is a {type(stored).__name__}, not a mapping; refused")
    _plain(stored, source)
    for section in ("model", "optimizer"):
        node = stored.get(section)
        if (node is not None or section == "model") and not (isinstance(node, dict)
                                                             and isinstance(node.get("_target_"), str)):
            raise StoredConfigRefused(f"{source}: its config's {section} is not a mapping with a _target_; refused")
    _directives(stored, source, given, registry())
    if isinstance(stored.get("model"), dict):
        _model_keys(stored["model"], source, given, options)
    _permissions(stored, source, given)
    _sections(stored, source, command_line_cfg)
    return stored


_DATA_KWARGS = {"in_shape": [1], "n_classes": 1, "mean": [0.0], "std": [1.0], "vocab_size": 1}
_RESUME_FIELDS = {"epoch": int, "best_epoch": int, "best": (list, tuple), "optimizer": dict, "scheduler": dict,
                  "scaler": dict, "rng": dict}


def complete(cfg, source: str):
    """``cfg`` (a stored config typed by the schema) with every mandatory value present, or a refusal."""
    from omegaconf import OmegaConf
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise StoredConfigRefused(f"{source}: its config lacks {', '.join(missing[:5])}; refused")
    return cfg


def _numbers(value, like) -> bool:
    """``value`` is a number (a list of numbers) of ``like``'s kind: finite, never a bool."""
    values, kind = (value, type(like[0])) if isinstance(like, list) else ([value], type(like))
    from advbench.config import is_number  # the schema's own test of a number of a kind
    if not isinstance(values, list) or not (values or isinstance(like, list)):
        return False
    return all(is_number(v, kind) for v in values)


def check_state(state: dict, source: str, resume: bool = False) -> None:
    """The rest of a checkpoint, by type: tensors where weights go, names where names go; for a resume, the
    training state ``last.pt`` holds."""
    import torch
    weights = state.get("state_dict")
    if not (isinstance(weights, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in weights.items())):
        raise StoredConfigRefused(f"{source}: its state_dict is not a mapping of parameter names to tensors")
    for key in ("vocab", "classes"):
        value = state.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise StoredConfigRefused(f"{source}: its {key} is not a list of names")
    inputs = state.get("data_kwargs")
    if inputs is not None and not (isinstance(inputs, dict) and set(inputs) <= set(_DATA_KWARGS) and all(
            _numbers(inputs[k], _DATA_KWARGS[k]) for k in inputs) and {"in_shape", "n_classes"} <= set(inputs)):
        raise StoredConfigRefused(f"{source}: its data_kwargs are not what advbench stores "
                                  f"({', '.join(_DATA_KWARGS)}: numbers and lists of numbers)")
    if state.get("choices") is not None and not isinstance(state["choices"], dict):
        raise StoredConfigRefused(f"{source}: its choices are not a mapping of group names")
    if resume:
        for key, kind in _RESUME_FIELDS.items():
            if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
                raise StoredConfigRefused(f"{source}: not a resumable last.pt (its {key} is missing or not a "
                                          f"{getattr(kind, '__name__', 'list')}); start a new run instead")
        if state["epoch"] < 1:
            raise StoredConfigRefused(f"{source}: its epoch={state['epoch']} is not a finished epoch")
