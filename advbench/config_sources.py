"""The config a run takes: this command line's, a checkpoint's (eval, saliency) or a resumed last.pt's, each
checked by the rules of runtime/stored.py before anything is built from it."""
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from advbench.checks import check_keys
from advbench.errors import AdvbenchError
from advbench.run_config import (check_finished_overrides, check_resume_overrides, checkpoint_config, command_line,
                                 plain)
from advbench.runtime.checkpoint import load_checkpoint
from advbench.runtime.stored import StoredConfigRefused, check_state, check_stored, complete


def load_config(cfg, out: Path):
    """(config, group choices, checkpoint state, resumed state) for the command line ``cfg``: a checkpoint's
    config for eval and saliency, a last.pt's for a resume, each checked before it is used."""
    check_keys(cfg)
    cfg = plain(cfg)
    choices = {k: v for k, v in HydraConfig.get().runtime.choices.items()
               if not k.startswith("hydra") and v is not None}  # an optional group left out is no choice
    if cfg.job in ("eval", "saliency"):
        if cfg.checkpoint is None and cfg.job == "eval" and (cfg.model.get("weights") or cfg.model.get("model_dir")):
            return cfg, choices, None, None  # the model's own config brings its weights (model.weights, robustbench)
        state = load_checkpoint(cfg.checkpoint)
        if state["config"] is None:  # a plain state dict or TorchScript: the command line says what it is
            return cfg, choices, state, None
        source = f"checkpoint={cfg.checkpoint}"
        stored(state, cfg, source)
        check_state(state, source)
        # The evaluation is the checkpoint's unless this command line names one (Hydra's default is no choice)
        given = command_line()
        choices = _choices(state) | {k: v for k, v in choices.items() if k == "eval" and k in given}
        return checked(checkpoint_config(cfg, state, job=cfg.job), source), choices, state, None
    if cfg.resume and (out / "last.pt").exists():
        state = load_checkpoint(str(out / "last.pt"))
        source = f"resume={cfg.resume}: last.pt"
        stored(state, cfg, source)
        check_state(state, source, resume=True)
        check_resume_overrides(checked(checkpoint_config(cfg, state, job="train", overrides=False), source), cfg,
                               state["epoch"])
        return checked(checkpoint_config(cfg, state, job="train"), source), _choices(state) or choices, state, state
    if cfg.resume and cfg.resume != "auto":
        raise AdvbenchError(f"resume={cfg.resume}: no last.pt there to resume from (is it a training run?)")
    return cfg, choices, None, None


def check_finished(cfg, out: Path) -> None:
    """Before a finished run is skipped (``resume``): refuse a command line that would change it."""
    if not (out / "last.pt").exists():
        return
    check_keys(cfg)
    cfg, state = plain(cfg), load_checkpoint(str(out / "last.pt"))
    source = f"resume={cfg.resume}: last.pt"
    stored(state, cfg, source)
    check_finished_overrides(checked(checkpoint_config(cfg, state, job="train", overrides=False), source), cfg, out)


def stored(state: dict, cfg, source: str) -> None:
    """Check ``state``'s config by the rules of runtime/stored.py, in place, before anything is built from it."""
    state["config"] = check_stored(state["config"], source, command_line(), OmegaConf.to_container(cfg))


def _choices(state: dict) -> dict:
    """The stored group choices: names only (they label the run), never anything to build."""
    choices = state.get("choices")
    return {str(k): str(v) for k, v in choices.items() if isinstance(v, str)} if isinstance(choices, dict) else {}


def checked(cfg, source: str):
    """``cfg`` (a checkpoint's config under this command line's) against the schema: types and known keys."""
    try:
        check_keys(cfg)
    except AdvbenchError as err:
        raise StoredConfigRefused(f"{source}: refused, {err}") from None
    return complete(cfg, source)
