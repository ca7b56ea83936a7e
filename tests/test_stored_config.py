"""A stored config is data: a battery of malicious checkpoints and last.pt files through job=eval, job=saliency,
resume= and the Python API. Nothing runs, nothing is written outside the run directory, and a permission or a
tracker comes from the command line only."""
import copy
import logging
import shutil

import pytest
import torch
from omegaconf.basecontainer import BaseContainer

import advbench
from advbench.errors import AdvbenchError
from advbench.runtime.stored import check_stored
from helpers import DIGITS, cli, one_line_error

import advbench.main  # noqa: F401  (registers advbench's resolvers, which the battery must cover too)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished run (model.pt) and an interrupted one (last.pt), trained once for the module."""
    root = tmp_path_factory.mktemp("stored")
    cli(*DIGITS, "epochs=1", f"hydra.run.dir={root}/done", cwd=root, check=True)
    cli(*DIGITS, "epochs=2", "stop_after_epoch=1", f"hydra.run.dir={root}/stopped", cwd=root)
    assert (root / "done" / "model.pt").exists() and (root / "stopped" / "last.pt").exists()
    return root


def marker_gadget(marker) -> dict:
    """A config node that, if instantiated, creates ``marker``."""
    return {"_target_": "pathlib.Path.touch", "self": {"_target_": "pathlib.Path", "_args_": [str(marker)]}}


RESOLVERS = sorted(set(BaseContainer._resolvers) | {"now", "hydra"})


def interpolation(name: str, marker) -> str:
    if name == "oc.create":
        return "${oc.create:{_target_: pathlib.Path.touch, self: {_target_: pathlib.Path, _args_: [%s]}}}" % marker
    return "${%s:%s}" % (name, marker)


def set_at(config: dict, path: str, value) -> None:
    """Put ``value`` at dotted ``path`` (``[i]`` for a list element), creating mappings on the way."""
    *parents, last = path.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    if last.endswith("]"):
        name, index = last[:-1].split("[")
        node[name][int(index)] = value
    else:
        node[last] = value


# (name, path, value-maker): each poisons one place of a stored config; every one must be refused in one line.
PLACES = ["model.hidden", "dataset.name", "eval.attacks.pgd20.steps", "dataset.mean[0]", "model.extra.inner",
          "optimizer.lr"]
REFUSED = (
    [(f"resolver-{r}", "model.hidden", lambda m, r=r: interpolation(r, m)) for r in RESOLVERS]
    + [(f"interpolation-at-{p}", p, lambda m: interpolation("oc.create", m)) for p in PLACES]
    + [("plain-interpolation", "dataset.root", lambda m: "${dataset.name}"),
       ("escaped-interpolation", "dataset.root", lambda m: "\\${oc.env:HOME}"),
       ("nested-target", "model.hidden", marker_gadget),
       ("list-held-target", "dataset.mean", lambda m: [marker_gadget(m)]),
       ("attack-target", "eval.attacks.evil", marker_gadget),
       ("model-replaced", "model", marker_gadget),
       ("optimizer-replaced", "optimizer", marker_gadget),
       ("args-directive", "model._args_", lambda m: [str(m)]),
       ("recursive-directive", "model._recursive_", lambda m: False),
       ("partial-changed", "optimizer._partial_", lambda m: False),
       ("unknown-model-key", "model.trust_remote_code", lambda m: True),
       ("model-key-of-wrong-type", "model.hidden", lambda m: [1, 2]),
       ("non-finite", "model.hidden", lambda m: float("nan")),
       ("unknown-top-key", "evil", lambda m: 1),
       ("wrong-schema-type", "epochs", lambda m: "many")]
)


def poisoned(path_in, path_out, place: str, value) -> None:
    state = torch.load(path_in, weights_only=True)
    set_at(state["config"], place, value)
    torch.save(state, path_out)


def outside(root, run) -> set:
    """Every file under ``root`` that is not under ``run``."""
    return {p for p in root.rglob("*") if run not in p.parents and p != run}


@pytest.mark.parametrize("name,place,make", REFUSED, ids=[r[0] for r in REFUSED])
@pytest.mark.parametrize("route", ["eval", "saliency", "resume", "api"])
def test_a_malicious_stored_config_is_refused_in_one_line_and_runs_nothing(runs, tmp_path, route, name, place, make):
    marker = tmp_path / "pwned"
    source = runs / ("stopped/last.pt" if route == "resume" else "done/model.pt")
    if route == "resume":
        run = tmp_path / "run"
        shutil.copytree(runs / "stopped", run)
        poisoned(source, run / "last.pt", place, make(marker))
        before = outside(tmp_path, run)
        code, err = cli(f"resume={run}", cwd=tmp_path)
    elif route == "api":
        poisoned(source, tmp_path / "evil.pt", place, make(marker))
        before = outside(tmp_path, tmp_path / "none")
        with pytest.raises(AdvbenchError) as raised:
            advbench.load_model(str(tmp_path / "evil.pt"))
        code, err = 2, f"{raised.value}\n"
        assert "refused" in str(raised.value) or "not a key" in str(raised.value)
    else:
        poisoned(source, tmp_path / "evil.pt", place, make(marker))
        before = outside(tmp_path, tmp_path / "run")
        code, err = cli(f"job={route}", f"checkpoint={tmp_path}/evil.pt", f"hydra.run.dir={tmp_path}/run",
                        cwd=tmp_path)
    assert code == 2, err
    one_line_error(err, "refused" if "refused" in err else "not a key")
    assert not marker.exists()
    run_dir = tmp_path / ("run" if route != "api" else "none")
    assert outside(tmp_path, run_dir) == before  # nothing written outside the run directory
    if route == "resume":
        assert (run / "status").read_text() == (runs / "stopped" / "status").read_text()  # never marked failed


def test_stored_permissions_are_switched_off_and_the_command_lines_stand(caplog):
    stored = {"model": {"_target_": "advbench.models.ultralytics_yolo.ultralytics_yolo", "weights": "x.pt",
                        "trust_pickle": True},
              "dataset": {"name": "digits", "download": True, "kwargs": {"download": True}}}
    with caplog.at_level(logging.WARNING):
        safe = check_stored(copy.deepcopy(stored), "checkpoint=x", {}, {})
    assert safe["model"]["trust_pickle"] is False and safe["dataset"]["download"] is False
    assert safe["dataset"]["kwargs"]["download"] is False
    assert "model.trust_pickle=True" in caplog.text and "command line" in caplog.text
    given = check_stored(copy.deepcopy(stored), "checkpoint=x", {"model.trust_pickle": "true"}, {})
    assert given["model"]["trust_pickle"] is True  # the user's own word, on this command line


def test_a_stored_trust_pickle_never_unpickles_the_file_it_names(runs, tmp_path):
    pytest.importorskip("ultralytics")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (marker.touch, ())
    torch.save({"model": Payload()}, tmp_path / "yolo.pt")
    state = torch.load(runs / "done" / "model.pt", weights_only=True)
    state["config"]["model"] = {"_target_": "advbench.models.ultralytics_yolo.ultralytics_yolo",
                                "weights": str(tmp_path / "yolo.pt"), "trust_pickle": True}
    state["config"]["dataset"]["name"] = "digits_det"
    torch.save(state, tmp_path / "evil.pt")
    code, err = cli("job=eval", f"checkpoint={tmp_path}/evil.pt", f"hydra.run.dir={tmp_path}/run",
                    "dataset.n_scenes=8", "dataset.n_test=8", cwd=tmp_path)
    assert code == 2 and not marker.exists()
    assert "trust_pickle" in one_line_error(err, "trust_pickle")


def test_a_stored_logger_and_hydra_section_are_ignored(runs, tmp_path):
    state = torch.load(runs / "done" / "model.pt", weights_only=True)
    state["config"]["logger"] = {"trackers": ["csv", "mlflow"], "experiment": "leak",
                                 "mlflow_uri": str(tmp_path / "elsewhere"), "wandb_mode": "online"}
    state["config"]["hydra"] = {"run": {"dir": str(tmp_path / "elsewhere2")}}
    torch.save(state, tmp_path / "evil.pt")
    code, err = cli("job=eval", f"checkpoint={tmp_path}/evil.pt", f"hydra.run.dir={tmp_path}/run",
                    "eval.n_examples=20", cwd=tmp_path)
    assert code == 0, err
    assert "logger section is ignored" in err and "hydra section is ignored" in err
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "elsewhere2").exists()
    assert not (tmp_path / "run" / "metrics.csv").exists()  # the csv tracker came from the file: not used
    assert (tmp_path / "run" / "results.json").exists()


def test_stored_paths_to_other_runs_are_not_followed(runs, tmp_path):
    state = torch.load(runs / "done" / "model.pt", weights_only=True)
    elsewhere = tmp_path / "elsewhere"
    state["config"] |= {"checkpoint": str(elsewhere / "x.pt"), "resume": str(elsewhere)}
    torch.save(state, tmp_path / "evil.pt")
    code, err = cli("job=eval", f"checkpoint={tmp_path}/evil.pt", f"hydra.run.dir={tmp_path}/run",
                    "eval.n_examples=20", cwd=tmp_path)
    assert code == 0, err
    assert not elsewhere.exists()


def test_the_api_loads_a_checkpoint_without_its_data(runs, tmp_path, monkeypatch):
    import advbench.data as data
    monkeypatch.setattr(data, "load_data", lambda cfg: pytest.fail("model.pt stores what the model needs"))
    model = advbench.load_model(str(runs / "done"))
    state = torch.load(runs / "done" / "model.pt", weights_only=True)
    assert not model.training
    assert all(torch.equal(v, state["state_dict"][k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("field,value", [("state_dict", "weights"), ("state_dict", {"w": [1.0]}),
                                         ("vocab", 3), ("classes", [1, 2]), ("choices", ["model"]),
                                         ("data_kwargs", {"in_shape": [1], "n_classes": 2, "trust_remote_code": 1}),
                                         ("data_kwargs", {"in_shape": ["a"], "n_classes": 2})])
def test_the_rest_of_a_checkpoint_is_checked_by_type(runs, tmp_path, field, value):
    state = torch.load(runs / "done" / "model.pt", weights_only=True)
    state[field] = value
    torch.save(state, tmp_path / "odd.pt")
    code, err = cli("job=eval", f"checkpoint={tmp_path}/odd.pt", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert code == 2 and field in one_line_error(err, "checkpoint=")


@pytest.mark.parametrize("field,value", [("epoch", "1"), ("epoch", 0), ("optimizer", None), ("best", 3)])
def test_a_last_pt_with_a_broken_training_state_is_refused(runs, tmp_path, field, value):
    run = tmp_path / "run"
    shutil.copytree(runs / "stopped", run)
    state = torch.load(run / "last.pt", weights_only=True)
    state[field] = value
    torch.save(state, run / "last.pt")
    code, err = cli(f"resume={run}", cwd=tmp_path)
    assert code == 2 and "last.pt" in one_line_error(err, "resume=")


# Fuzzing: whatever the bytes or the values, a checkpoint either loads or is refused with advbench's own error.
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from advbench.runtime.checkpoint import load_checkpoint, load_stored  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
PLAIN = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=3), max_leaves=8)


@FUZZ
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_as_a_checkpoint_fail_in_one_line(tmp_path, data):
    (tmp_path / "fuzz.pt").write_bytes(data)
    with pytest.raises(AdvbenchError):
        load_checkpoint(str(tmp_path / "fuzz.pt"))


@FUZZ
@given(head=st.binary(min_size=0, max_size=64), cut=st.integers(0, 4000))
def test_a_truncated_or_patched_checkpoint_fails_in_one_line(runs, tmp_path, head, cut):
    raw = (runs / "done" / "model.pt").read_bytes()
    (tmp_path / "fuzz.pt").write_bytes(head + raw[len(head):len(raw) - cut] if cut else head + raw[len(head):])
    try:
        load_stored(str(tmp_path / "fuzz.pt"))
    except AdvbenchError:
        pass


@FUZZ
@given(place=st.sampled_from(["model.hidden", "model.depth", "model", "dataset", "dataset.mean", "eval", "epochs",
                              "eval.attacks.pgd20", "optimizer.lr", "choices", "logger", "hydra", "seed"]),
       value=PLAIN)
def test_arbitrary_values_in_a_stored_config_load_or_fail_in_one_line(runs, tmp_path, place, value):
    state = torch.load(runs / "done" / "model.pt", weights_only=True)
    set_at(state["config"], place, value)
    torch.save(state, tmp_path / "fuzz.pt")
    try:
        advbench.load_model(str(tmp_path / "fuzz.pt"))
    except AdvbenchError:
        pass
