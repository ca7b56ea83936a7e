"""RobustBench's model zoo (pip install 'advbench[robustbench]'), loaded from its local model directory only.

RobustBench's own ``load_model`` downloads missing weights and unpickles them (``torch.load`` without
``weights_only``); here the architecture comes from its zoo and the weights from ``<model_dir>/<dataset>/<threat>/
<name>.pt`` (RobustBench's layout) with ``weights_only=True``: a stored file is data."""
import importlib.util
import os
import sys
import types
from pathlib import Path

import torch

from advbench.errors import AdvbenchError


def _pkg_resources_stub() -> None:
    """What robustbench's imports need and a current environment may lack: setuptools' pkg_resources (removed in
    setuptools 81; robustbench uses resource_filename alone), and fra31's AutoAttack under its original module name
    ``autoattack`` (PyPI packages the same code as ``pyautoattack``)."""
    if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
        stub = types.ModuleType("pkg_resources")
        stub.resource_filename = lambda name, path: os.path.join(
            os.path.dirname(importlib.util.find_spec(name).origin), path)
        sys.modules["pkg_resources"] = stub
    # Another package may own the name `autoattack` without its `state` module (torchattacks 3.3 vendors an
    # older copy): robustbench needs fra31's current code, which pyautoattack is.
    try:
        import autoattack.state  # noqa: F401
    except ImportError:
        if importlib.util.find_spec("pyautoattack") is not None:
            import pyautoattack
            import pyautoattack.state
            sys.modules["autoattack"], sys.modules["autoattack.state"] = pyautoattack, pyautoattack.state


def robustbench_model(in_shape, n_classes: int, mean=None, std=None, name: str = "Standard",
                      dataset: str = "cifar10", threat: str = "Linf", model_dir: str = "models") -> torch.nn.Module:
    """RobustBench zoo model ``name`` for ``dataset`` and ``threat`` (Linf, L2, corruptions); it normalizes inside
    (the data set's mean/std are not used) and takes [0,1] images."""
    _pkg_resources_stub()
    try:
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
        from robustbench.utils import _safe_load_state_dict
    except ImportError:
        raise AdvbenchError("model=robustbench needs the robustbench package: pip install 'advbench[robustbench]'") \
            from None
    try:
        bench, threat_model = BenchmarkDataset(dataset), ThreatModel(threat)
    except ValueError:
        raise AdvbenchError(f"model.dataset={dataset}, model.threat={threat}: expected a RobustBench data set "
                            "(cifar10, cifar100, imagenet) and threat model (Linf, L2, corruptions)") from None
    zoo = model_dicts[bench][threat_model]
    if name not in zoo:
        raise AdvbenchError(f"model.name={name} is not in RobustBench's {dataset} {threat} zoo: e.g. "
                            f"{', '.join(list(zoo)[:6])}...")
    path = Path(model_dir).expanduser() / bench.value / threat_model.value / f"{name}.pt"
    if not path.is_file():
        raise AdvbenchError(f"model.name={name}: no weights at {path}; put RobustBench's checkpoint there (where "
                            "online: robustbench.utils.load_model(name, model_dir=...) downloads it to that path)")
    model = zoo[name]["model"]()
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  torch reports a refused pickle in several exception types
        raise AdvbenchError(f"model.name={name}: {path} holds objects other than tensors; refused by "
                            f"torch.load(weights_only=True) ({type(err).__name__})") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    model = _safe_load_state_dict(model, name, state, bench)
    out = model(torch.zeros(1, *in_shape)).shape[-1]
    if out != n_classes:
        raise AdvbenchError(f"model.name={name} has {out} classes; the data set has {n_classes}")
    return model.eval()
