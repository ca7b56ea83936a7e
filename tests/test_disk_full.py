"""A full disk anywhere in a run: one line on stderr, exit 1, status ``failed: no space left on device (<path>)``,
the previous version of every file intact and no temp file left behind."""
import errno
import logging
import os
import tempfile

import pytest
import torch

from advbench.runtime import outputs
from helpers import TINY, cli, one_line_error


def full_at(monkeypatch, *names, at=1, code=errno.ENOSPC):
    """The disk fills up when advbench writes one of ``names`` (the ``at``-th time): its temp file is made, its
    data cannot be flushed to the disk."""
    real_mkstemp, real_fsync, armed, seen = tempfile.mkstemp, os.fsync, set(), []

    def mkstemp(*args, prefix="", **kwargs):
        fd, tmp = real_mkstemp(*args, prefix=prefix, **kwargs)
        if any(prefix == f".{name}." for name in names):
            seen.append(prefix)
            if seen.count(prefix) >= at:
                armed.add(fd)
        return fd, tmp

    def fsync(fd):
        if fd in armed:
            armed.discard(fd)
            raise OSError(code, os.strerror(code))
        return real_fsync(fd)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fsync", fsync)


def no_temp_files(run):
    return not [p for p in run.rglob("*.tmp")]


@pytest.mark.parametrize("status_too", [False, True])
def test_a_full_disk_at_the_final_evaluation(tmp_path, monkeypatch, status_too):
    run = tmp_path / "run"
    full_at(monkeypatch, "config_resolved.yaml", *(["status"] if status_too else []))
    code, err = cli(*TINY, f"hydra.run.dir={run}", cwd=tmp_path)
    line = one_line_error(err, f"no space left on device ({run}/config_resolved.yaml)")
    assert code == 1 and f"advbench resume={run}" in line
    # With no room even for the status's temp file, the status is rewritten in place: it must not say running.
    assert (run / "status").read_text() == f"failed: no space left on device ({run}/config_resolved.yaml)\n"
    assert not (run / "config_resolved.yaml").exists() and not (run / "results.json").exists()
    assert torch.load(run / "model.pt", weights_only=True)["config"]["epochs"] == 2  # written before: intact
    assert no_temp_files(run)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_at_a_checkpoint_during_training(tmp_path, monkeypatch, code):
    run = tmp_path / "run"
    full_at(monkeypatch, "last.pt", at=2, code=code)
    exit_code, err = cli(*TINY, "epochs=3", f"hydra.run.dir={run}", cwd=tmp_path)
    assert exit_code == 1
    one_line_error(err, f"no space left on device ({run}/last.pt)")
    assert (run / "status").read_text() == f"failed: no space left on device ({run}/last.pt)\n"
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1  # the previous last.pt is intact
    assert no_temp_files(run)


def test_a_full_disk_in_a_writer_of_its_own(tmp_path, monkeypatch):
    # A writer that does not go through advbench's atomic writes (a tracker, a library): its OSError is enough.
    def summary(results, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr("advbench.experiment.write_summary", summary)
    run = tmp_path / "run"
    code, err = cli(*TINY, "epochs=1", f"hydra.run.dir={run}", cwd=tmp_path)
    assert code == 1
    one_line_error(err, f"no space left on device ({run}/summary.md)")
    assert (run / "status").read_text() == f"failed: no space left on device ({run}/summary.md)\n"


class FullStream:
    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self):
        pass

    def close(self):
        pass


def test_a_full_disk_drops_log_lines_quietly(tmp_path, capsys):
    handler = logging.FileHandler(tmp_path / "advbench.log")
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        deferred = outputs.DeferredLog(tmp_path)
        deferred.start()

        handler.stream.close()
        handler.stream = FullStream()
        logging.getLogger("advbench.test").warning("a line the disk has no room for")
    finally:
        root.removeHandler(handler)
        handler.close()
    assert "Logging error" not in capsys.readouterr().err  # not a traceback per line
