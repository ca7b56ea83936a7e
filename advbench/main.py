"""The ``advbench`` command: Hydra composes the config, ``run`` does the experiment."""
import logging
import sys
from pathlib import Path

import hydra

from advbench.config import register_configs
from advbench.errors import AdvbenchError
from advbench.experiment import run

log = logging.getLogger(__name__)
register_configs()
# conf/ sits beside the package at the top of the checkout (the package is installed editable).
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="config")
def main(cfg) -> float | None:
    """Run one experiment; return its worst-case robust accuracy for sweepers."""
    try:
        return run(cfg)
    except AdvbenchError as err:
        log.error("%s", err)
        sys.exit(2)


if __name__ == "__main__":
    main()
