"""model=yolov5's inputs: the yolov5 package imported offline and quietly, model YAMLs, and YOLOv5 checkpoints loaded
without running code from the file."""
import functools
import os
import pickle
import re
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from advbench.errors import AdvbenchError

INSTALL = "model=yolov5 needs the yolov5 package: pip install 'advbench[yolov5]'"
# What yolov5's import sets process-wide (thread counts for subprocesses), put back after it
_ENV = ("OMP_NUM_THREADS", "NUMEXPR_MAX_THREADS", "TF_CPP_MIN_LOG_LEVEL")
# Classes of yolov5.models whose constructors load files, download or wrap inference backends: never in a .pt
_NEVER = {"DetectMultiBackend", "AutoShape", "Ensemble"}


def import_yolov5():
    """yolov5's model module, imported offline and quietly (its process-wide settings put back)."""
    from advbench.models.ultralytics_yolo import _ultralytics
    try:
        _ultralytics()  # yolov5 imports ultralytics: offline, and ultralytics' own process-wide patches undone
    except AdvbenchError:
        raise AdvbenchError(INSTALL) from None
    os.environ.setdefault("YOLOv5_AUTOINSTALL", "false")  # never pip-install a missing requirement on the fly
    import numpy as np
    from torch import _tensor_str
    numpy_options, torch_options = np.get_printoptions(), dict(vars(_tensor_str.PRINT_OPTS))
    path, env, had_pandas = list(sys.path), {k: os.environ.get(k) for k in _ENV}, "pandas" in sys.modules
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its pkg_resources import warns of setuptools' deprecation
            from yolov5.models import yolo
    except ImportError:
        raise AdvbenchError(INSTALL) from None
    finally:
        np.set_printoptions(**numpy_options)
        vars(_tensor_str.PRINT_OPTS).update(torch_options)
        # models/yolo.py appends its own folder, where a later `import utils` would find yolov5's
        sys.path[:] = [p for p in sys.path if p in path or Path(p).name != "yolov5"]
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not had_pandas and "pandas" in sys.modules:
            sys.modules["pandas"].reset_option("display.max_columns")
    return yolo


def cfg_path(cfg, yolo) -> Path:
    """A local model YAML, or one yolov5 ships (models/, models/hub/)."""
    if "://" in str(cfg):
        raise AdvbenchError(f"model.cfg={cfg}: give a YAML name or a local file, not a URL")
    shipped = Path(yolo.__file__).parent
    for path in (Path(str(cfg)).expanduser(), shipped / str(cfg), shipped / "hub" / str(cfg)):
        if path.is_file():
            return path
    raise AdvbenchError(f"model.cfg={cfg}: no such model YAML (e.g. yolov5n.yaml, yolov5s6.yaml, or a local file)")


class _Uncallable(type):
    """The type of the stand-ins the unpickler is given for module classes: it rebuilds a module from its saved
    state (object.__new__, then __setstate__) but can never call the class, whose constructor may run code
    (DetectionModel's evaluates the strings of the model YAML it is given)."""

    def __call__(cls, *args, **kwargs):
        raise pickle.UnpicklingError(f"calls {cls.__module__}.{cls.__qualname__}(...) while loading")


@functools.cache
def _stand_in(cls: type) -> type:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # subclassing a deprecated module (nn.Container) warns
        return _Uncallable(cls.__name__, (cls,), {"__module__": cls.__module__, "__qualname__": cls.__qualname__})


def safe_classes(yolo) -> list:
    """(object, name) pairs a YOLOv5 .pt may pickle: torch's modules and yolov5's (by the names the pip package
    and the GitHub repository give them) as uncallable stand-ins, numpy arrays and scalars (train.py's
    best_fitness), paths."""
    import numpy as np
    from yolov5.models import common, experimental
    allowed = [(_stand_in(c), f"{c.__module__}.{c.__qualname__}") for c in vars(nn).values()
               if isinstance(c, type) and issubclass(c, nn.Module)]
    for module in (common, experimental, yolo):
        for name, c in vars(module).items():
            if isinstance(c, type) and issubclass(c, nn.Module) and c.__module__ == module.__name__ \
                    and name not in _NEVER:
                short = module.__name__.removeprefix("yolov5.")  # models.yolo: a checkpoint saved by the repo
                allowed += [(_stand_in(c), f"{module.__name__}.{name}"), (_stand_in(c), f"{short}.{name}")]
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    for old in ("numpy.core", "numpy._core"):
        allowed += [(multiarray._reconstruct, f"{old}.multiarray._reconstruct"),
                    (multiarray.scalar, f"{old}.multiarray.scalar")]
    dtypes = [(c, f"numpy.dtypes.{c.__name__}") for c in vars(getattr(np, "dtypes", np)).values()
              if isinstance(c, type) and issubclass(c, np.dtype)]  # what an array's dtype is rebuilt as
    return allowed + dtypes + [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype"),
                               (Path().__class__, "pathlib.PosixPath")]


def load_weights(path, yolo):
    """(a YOLOv5 model, None) or (None, a state dict), from a local file, refusing any class not allowed."""
    if not Path(path).is_file():
        raise AdvbenchError(f"model.weights={path}: no such file (weights are never downloaded)")
    allowed = safe_classes(yolo)
    names = {name for _, name in allowed}
    refused = f"model.weights={path}: refused, it pickles %s, which is neither a torch nor a yolov5 class"
    try:  # the file's globals, read without unpickling anything
        other = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - names)
    except Exception:  # not a zip-format torch file: the weights_only load below judges it
        other = []
    if other:
        raise AdvbenchError(refused % ", ".join(other))
    try:
        with torch.serialization.safe_globals(allowed):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        said = " ".join(str(err).split())
        for pattern, message in ((r"GLOBAL (\S+)", refused), (r"calls (\S+?)\(", f"model.weights={path}: refused, "
                                  "it calls %s while loading, which could run code; a .pt only restores objects")):
            if found := re.search(pattern, said):
                raise AdvbenchError(message % found.group(1)) from None
        # e.g. torch's legacy format, which stores a whole module's source code: it never loads safely
        why = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", said)
        raise AdvbenchError(f"model.weights={path}: refused, torch cannot load it without running code from it"
                            + (f" ({why.group(1)})" if why else "")) from None
    except (RuntimeError, OSError, EOFError) as err:
        raise AdvbenchError(f"model.weights={path}: not a readable torch file ({type(err).__name__})") from None
    if isinstance(ckpt, dict):
        model = ckpt.get("ema") if ckpt.get("ema") is not None else ckpt.get("model")  # as attempt_load
        if isinstance(model, nn.Module):
            return _restored(model, yolo).float(), None
        state = ckpt.get("state_dict", ckpt)
        if state and all(torch.is_tensor(v) for v in state.values()):
            return None, state
    raise AdvbenchError(f"model.weights={path}: neither a YOLOv5 checkpoint (a dict with 'model' or 'ema') nor a "
                        "state dict")


def _restored(model, yolo):
    """The modules given back their own classes; attempt_load's updates for older torch and yolov5 versions."""
    for m in model.modules():
        if isinstance(type(m), _Uncallable):
            m.__class__ = type(m).__bases__[0]
        if type(m) is yolo.Detect and not isinstance(m.anchor_grid, list):
            m.anchor_grid = [torch.zeros(1)] * m.nl
        elif type(m) is nn.Upsample and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None
    if isinstance(getattr(model, "names", None), (list, tuple)):
        model.names = dict(enumerate(model.names))
    return model
