"""Data-parallel training with torchrun: 2 processes on the CPU (gloo)."""
import json
import os
import subprocess
import sys

import numpy as np

from helpers import TINY, advbench


def test_two_process_ddp_run_writes_one_directory_with_gathered_results(tmp_path, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("tmpdir")  # the ranks' TMPDIR, to see what they leave there
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "advbench", *TINY, "eval.n_examples=101"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TMPDIR": str(scratch)})
    assert proc.returncode == 0, proc.stderr
    # rank 1's directory (Hydra's and its own) is removed; torchrun's torchelastic_* logs are torch's
    assert [p.name for p in scratch.iterdir() if p.name.startswith("advbench")] == []
    [run] = (tmp_path / "outputs").glob("*/*")  # the one run directory, named as usual
    results = json.loads((run / "results.json").read_text())
    assert results["world_size"] == 2 and results["n_examples"] == 101  # both ranks' shards, gathered
    flags = np.load(run / "robust_flags.npz")
    assert len(flags["clean"]) == 101 and flags["clean"].mean() == results["clean_acc"]
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]  # only rank 0 wrote files
    assert (run / "advbench.log").read_text().count("epoch 1:") == 1

    # The gathered clean flags are those of evaluating the same weights in one process.
    advbench("job=eval", f"checkpoint={run}", "progress=false", f"hydra.run.dir={tmp_path}/single",
             cwd=tmp_path)
    single = json.loads((tmp_path / "single" / "results.json").read_text())
    assert single["world_size"] == 1
    # Same weights, other batch splits: a matrix product may round differently, so an example whose two best
    # logits tie to the last bit could flip. At most 2 of 101 (measured: 0), never a systematic difference.
    mismatches = (np.load(tmp_path / "single" / "robust_flags.npz")["clean"] != flags["clean"]).sum()
    assert mismatches <= 2 and abs(single["clean_acc"] - results["clean_acc"]) <= 2 / 101
