"""advbench: adversarial training and robustness evaluation, driven by Hydra configs, usable from Python."""
from advbench.version import __version__

__all__ = ["Attack", "attack", "evaluate", "load_model", "losses", "__version__"]


def __getattr__(name):
    # Lazy, so that the command line can install its signal handlers before torch is imported.
    if name in ("attack", "evaluate"):
        from advbench import api
        return getattr(api, name)
    if name == "Attack":
        from advbench.attacks.spec import Attack
        return Attack
    if name == "losses":  # the training objectives, for your own loop
        import advbench.losses as losses  # binds the submodule: no second call of this function
        return losses
    if name == "lightning":  # the Lightning callback (needs lightning)
        import advbench.lightning as lightning
        return lightning
    if name == "load_model":
        from advbench.runtime.checkpoint import load_model
        return load_model
    raise AttributeError(f"module 'advbench' has no attribute {name!r}")
