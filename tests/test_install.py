"""A built wheel works on its own: the CLI, ``--cfg job`` and the API from any directory, configs included."""
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args, cwd):
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.slow
def test_a_wheel_installed_into_a_fresh_environment_works_from_any_directory(tmp_path):
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist",
        ROOT, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("advbench-*.whl")
    run(sys.executable, "-m", "venv", tmp_path / "env", cwd=tmp_path)
    site = next((tmp_path / "env" / "lib").glob("python3*/site-packages"))
    # The dependencies (torch, hydra...) are reused from this environment: a path entry, whose .pth files (this
    # checkout's editable install among them) are not processed, so only the wheel provides advbench.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env_bin = tmp_path / "env" / "bin"
    run(env_bin / "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(env_bin / "python", "-c", "import advbench, advbench.conf; print(advbench.conf.__file__)",
                cwd=elsewhere).stdout.strip()
    assert where.startswith(str(site)) and not where.startswith(str(ROOT))
    assert "dataset:" in run(env_bin / "advbench", "--cfg", "job", "dataset=digits", cwd=elsewhere).stdout
    api = run(env_bin / "python", "-c", "import advbench; a = advbench.attack('pgd'); print(a.name, a.steps)",
              cwd=elsewhere)
    assert api.stdout.split() == ["pgd", "10"]
    run(env_bin / "advbench", "dataset=digits", "model=mlp", "epochs=1", "eval.n_examples=20", "progress=false",
        "threads=1", "val.attack.steps=2", "hydra.run.dir=run", cwd=elsewhere)
    results = json.loads((elsewhere / "run" / "results.json").read_text())
    assert results["n_examples"] == 20 and 0 <= results["robust_acc"] <= results["clean_acc"]
