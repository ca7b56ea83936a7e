"""benchmarks/gpu.sh runs only on a lent GPU, seldom: these keep it from going stale in between (a moved module, a
renamed option) and check its time budget, without a GPU."""
import importlib.util
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("gpu.sh", "gpu_kit.sh", "gpu_device.sh")


def _gpu_sh() -> str:
    return (ROOT / "benchmarks" / "gpu.sh").read_text().replace("\\\n", " ")


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_scripts_parse(script):
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / script)], check=True)


def test_every_module_it_runs_exists():
    modules = set(re.findall(r"-m ([a-z_][\w.]*)", _gpu_sh())) - {"pytest"}
    assert "advbench" in modules and "advbench.tasks.text.tiny_bert" in modules
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module


def test_every_benchmark_it_runs_takes_the_options_given():
    calls = re.findall(r'"\$py" (benchmarks/\w+\.py)([^\n]*)', _gpu_sh())
    assert len(calls) >= 8
    for script, args in calls:
        source = (ROOT / script).read_text() + (ROOT / "benchmarks" / "timing.py").read_text()
        for option in (word for word in shlex.split(args) if word.startswith("--")):
            assert f'"{option}"' in source, f"{script} has no option {option}"


def test_tests_it_runs_exist():
    for path in re.findall(r"tests/test_\w+\.py", _gpu_sh()):
        assert (ROOT / path).exists(), path


def test_a_spent_budget_skips_the_parts_and_says_why(tmp_path):
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(tmp_path), "", "10"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = (tmp_path / "parts.log").read_text().splitlines()
    assert out.returncode == 0 and lines == out.stdout.splitlines()
    assert "device: skipped, 10 s of the budget left" in lines
    assert "autoattack: skipped, no trained run given" in lines
    assert all("skipped" in line for line in lines) and len(lines) >= 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts.log"]


def test_gpu_parts_picks_the_parts(tmp_path):
    subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(tmp_path), "", "10"], cwd=ROOT, check=True,
                   capture_output=True, env={"PATH": "/usr/bin:/bin", "GPU_PARTS": "text_speed autoattack"},
                   timeout=60)
    assert (tmp_path / "parts.log").read_text().splitlines() == [
        "autoattack: skipped, no trained run given", "text_speed: skipped, 10 s of the budget left"]
