"""Fuzz of the config checks: any value of any number the schema has passes ``check_keys`` and ``check_config`` or
is refused by them as one AdvbenchError line; no other exception escapes, and no nan or inf passes."""
import copy
import dataclasses
import functools
import math
import typing

import pytest
from hypothesis import given, settings, strategies as st
from omegaconf import OmegaConf

from advbench.checks import check_config, check_keys
from advbench.config import AttackConf, Config
from advbench.errors import AdvbenchError
from advbench.run_config import plain
from conftest import compose_config


def numbers(schema, prefix=""):
    """{key: int or float} of the schema's number fields, walked here apart from checks.py's own walk."""
    found = {}
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = args[0] if len(args) == 1 and type(None) in typing.get_args(kind) else kind
        if dataclasses.is_dataclass(kind):
            found |= numbers(kind, f"{prefix}{f.name}.")
        elif kind in (int, float):
            found[f"{prefix}{f.name}"] = kind
    return found


KEYS = numbers(Config) | {f"eval.attacks.*.{k}": kind for k, kind in numbers(AttackConf).items()}
# One composed config per task, so that each task's checks (detection scores, segmentation thresholds) run.
BASES = {"classification": ["dataset=digits", "model=mlp"],
         "detection": ["dataset=digits_det", "model=yolo_tiny", "attack=pgd", "eval=detection"],
         "segmentation": ["dataset=digits_seg", "model=unet_tiny", "attack=pgd", "eval=segmentation"]}
ODD = [math.nan, math.inf, -math.inf, -0.0, 0, -1, 1, 0.5, 1.5, -1e308, 1e308, 2 ** 63, -2 ** 63 - 1, 2 ** 64,
       True, False, None, "", "abc", "1", "nan", "auto", [], {}]
VALUES = st.one_of(st.sampled_from(ODD), st.none(), st.booleans(), st.integers(),
                   st.integers(min_value=-2 ** 80, max_value=2 ** 80), st.floats(), st.text(max_size=8))


@functools.lru_cache(maxsize=None)
def base(name):
    """The composed config of ``BASES[name]``, as a run checks it (composed once: each example copies it)."""
    return plain(compose_config(BASES[name]))


def with_value(cfg, key, value):
    """A copy of ``cfg`` with ``value`` at ``key`` (``eval.attacks.*``: the first evaluation attack)."""
    cfg = copy.deepcopy(cfg)
    OmegaConf.update(cfg, key.replace("*", next(iter(cfg.eval.attacks))), value, merge=False)
    return cfg


def refused_in_one_line(check, cfg) -> bool:
    """Whether ``check`` refused ``cfg``; a refusal must be an AdvbenchError of one short line."""
    try:
        check(cfg)
    except AdvbenchError as err:
        assert "\n" not in str(err) and len(str(err)) < 500, str(err)
        return True
    return False


def test_the_walk_finds_the_numbers_the_checks_must_cover():
    assert {"epochs": int, "lr": float, "eval.seg_threshold": float, "training.guard.max_drop": float,
            "val.attack.steps": int, "eval.attacks.*.eot": int, "dataset.val_size": int}.items() <= KEYS.items()


def a_number(value, kind) -> bool:
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int) and -2 ** 63 <= value < 2 ** 63
    return isinstance(value, (int, float)) and math.isfinite(value)


@settings(deadline=None, derandomize=True, max_examples=400)
@given(task=st.sampled_from(sorted(BASES)), key=st.sampled_from(sorted(KEYS)), value=VALUES)
def test_any_value_of_any_number_passes_or_is_refused_in_one_line(task, key, value):
    cfg = with_value(base(task), key, value)
    refused_in_one_line(check_keys, cfg)  # the command line's config
    if not refused_in_one_line(check_config, cfg):  # a stored config (checkpoint, resume) gets only these checks
        assert value is None or a_number(value, KEYS[key]), f"{key}={value!r} passed check_config"


@pytest.mark.parametrize("key", sorted(k for k, kind in KEYS.items() if kind is float))
def test_nan_and_inf_are_refused_for_every_float_key(key):
    for value in (math.nan, math.inf, -math.inf):
        assert refused_in_one_line(check_config, with_value(base("classification"), key, value)), (key, value)


def test_seg_threshold_has_a_range():
    cfg = with_value(base("segmentation"), "eval.seg_threshold", 1.5)
    with pytest.raises(AdvbenchError, match=r"eval.seg_threshold=1.5: expected a pixel accuracy in \(0, 1\]"):
        check_config(cfg)
