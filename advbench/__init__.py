"""advbench: adversarial training and robustness evaluation, driven by Hydra configs, usable from Python."""
__version__ = "0.1.0"

from advbench.api import attack, evaluate  # noqa: E402
from advbench.attack_spec import Attack  # noqa: E402

__all__ = ["Attack", "attack", "evaluate", "__version__"]
