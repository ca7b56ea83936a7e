"""The docs: every example runs as written (or says why not), the option tables match conf/, the site builds.

The examples run only with ADVBENCH_DOCS_EXAMPLES=1 (``make docs-check``; minutes): every ```bash and ```python
block of docs/*.md and README.md, in page order, in one fresh directory per page, 60 s each. A block that cannot
run on a CPU in under a minute carries ``<!-- no-run: reason -->`` on the line before its fence.
"""
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONF = ROOT / "advbench" / "conf"
PAGES = sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]
RUN = ("bash", "python")
SHOWN = ("text", "yaml")  # output, file contents: never run
NO_RUN = re.compile(r"<!--\s*no-run:(.*?)-->")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
TIMEOUT = 60
EXAMPLES = os.environ.get("ADVBENCH_DOCS_EXAMPLES") == "1"

sys.path.insert(0, str(ROOT / "tools"))
import docs_hooks  # noqa: E402


@dataclass
class Block:
    """A fenced code block of a page: where it starts, its language, its code, and why it is not run."""

    page: Path
    line: int
    lang: str
    code: str
    no_run: str | None  # the marker's reason ("" for a marker without one); None: the block runs

    def __str__(self):
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list:
    """The fenced blocks of ``page``, their indentation (list items) removed."""
    lines, found, i = page.read_text(encoding="utf-8").splitlines(), [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, lang, start = fence.group(1), fence.group(2), i
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{page.relative_to(ROOT)}:{i + 1}: a ``` fence is never closed"
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = NO_RUN.search(before)
        code = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end])
        found.append(Block(page, start + 1, lang, code + "\n", marker.group(1).strip() if marker else None))
        i = end + 1
    return found


PAGE_IDS = {"argvalues": [p for p in PAGES if p.is_file()], "ids": lambda p: str(p.relative_to(ROOT))}


@pytest.mark.parametrize("page", **PAGE_IDS)
def test_every_block_names_its_language(page):
    """An unnamed or unknown fence would escape the example check: bash and python run, text and yaml are shown."""
    bad = [f"{b} ```{b.lang}" for b in blocks(page) if b.lang not in RUN + SHOWN]
    assert not bad, f"fences must be one of {RUN + SHOWN}: {bad}"


@pytest.mark.parametrize("page", **PAGE_IDS)
def test_no_run_markers_give_a_reason_and_precede_a_runnable_block(page):
    skipped = [b for b in blocks(page) if b.no_run is not None]
    assert not [str(b) for b in skipped if not b.no_run], "no-run markers without a reason"
    assert not [str(b) for b in skipped if b.lang not in RUN], "no-run before a block that never runs"
    # a marker anywhere else (not on the line before a fence) would silently do nothing
    assert len(NO_RUN.findall(page.read_text(encoding="utf-8"))) == len(skipped), \
        f"{page.relative_to(ROOT)}: a no-run marker is not on the line before a fence"


def test_blocks_are_parsed():
    """The parser finds the blocks of a page written for it (so the example check cannot pass on nothing)."""
    found = blocks(DOCS / "getting-started.md")
    assert [b.lang for b in found].count("bash") >= 5
    assert any(b.no_run is None for b in found) and any(b.no_run for b in found)
    nested = [b for b in blocks(DOCS / "tasks" / "classification.md") if "class Net" in b.code]
    assert nested and nested[0].code.startswith("cat > mynet.py")  # a heredoc's lines kept whole


def _table_rows(page: Path, header: str) -> dict:
    """The first column's first backticked name -> the rest of the row, for the table under ``header``."""
    text = page.read_text(encoding="utf-8")
    table = text[text.index(header):].split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[re.findall(r"`([^`]+)`", cells[0])[0]] = cells[1:]
    return rows


def test_configuration_lists_every_option_of_every_group():
    """The option table names exactly the YAML files of each config group (hydra's launcher presets aside)."""
    rows = _table_rows(DOCS / "configuration.md", "| group | options |")
    groups = {d.name: {f.stem for f in d.glob("*.yaml")} for d in CONF.iterdir() if d.is_dir() and d.name != "hydra"}
    assert set(rows) == set(groups)
    for group, options in groups.items():
        listed = re.findall(r"`([^`]+)`", rows[group][0])
        assert sorted(listed) == sorted(options), f"{group}: missing {options - set(listed)}, " \
                                                  f"not in conf/ {set(listed) - options}"
        assert len(listed) == len(set(listed)), f"{group}: an option listed twice"


def test_training_page_lists_every_mode_and_what_it_accepts():
    from advbench.training.modes import MODES
    rows = _table_rows(DOCS / "training.md", "| mode | objective | accepts |")
    assert set(rows) == set(MODES)
    for name, mode in MODES.items():
        accepts = set(re.findall(r"[a-z_]+", rows[name][1].split("(")[0]))
        expected = {"any"} if mode.accepts is None else set(mode.accepts) | ({"fgsm_rs"} if "fgsm" in mode.accepts
                                                                             else set())
        assert accepts >= expected, f"training={name}: the table says {accepts}, the mode accepts {expected}"
        assert accepts - expected <= {"unused"}, f"training={name}: the table says {accepts}, the mode {expected}"


def test_architecture_counts_are_true():
    """The counts the architecture page states, against the registries they count."""
    from advbench.attacks.spec import KINDS
    from advbench.attacks.threats import THREATS
    from advbench.tasks import sources, tasks
    from advbench.training.modes import MODES
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    counts = {"tasks": len(tasks()), "attack kinds": len(KINDS), "threat models": len(THREATS),
              "training modes": len(MODES), "data sets": len(sources()),
              "models": len(list((CONF / "model").glob("*.yaml")))}
    for what, n in counts.items():
        stated = re.findall(rf"\*\*(\d+)\*\* {what}\b", text)
        assert stated == [str(n)], f"architecture.md states {stated} {what}; there are {n}"


def test_package_sizes_are_generated_from_the_tree():
    """The architecture page's package table is built from the files at build time, one row per package."""
    assert docs_hooks.MARKER in (DOCS / "architecture.md").read_text(encoding="utf-8")
    page = docs_hooks.on_page_markdown(docs_hooks.MARKER, None, None, None)
    packages = [p.parent for p in (ROOT / "advbench").rglob("__init__.py")
                if p.parent.name != "advbench" and "conf" not in p.parts]
    for package in packages:
        modules = len(list(package.glob("*.py")))
        lines = sum(len(f.read_text(encoding="utf-8").splitlines()) for f in package.glob("*.py"))
        assert f"| `{package.relative_to(ROOT).as_posix()}` | {modules} | {lines} |" in page
    top = list((ROOT / "advbench").glob("*.py"))
    assert f"| `advbench` | {len(top)} | {sum(len(f.read_text(encoding='utf-8').splitlines()) for f in top)} |" in page
    assert page.count("\n| `advbench") == len(packages) + 1


def test_architecture_layout_names_every_module():
    """The layout table names each module of each package in that package's row."""
    rows = _table_rows(DOCS / "architecture.md", "| path | holds |")
    for package in [ROOT / "advbench"] + [p.parent for p in (ROOT / "advbench").rglob("__init__.py")
                                          if p.parent.name != "advbench" and "conf" not in p.parts]:
        row = rows[f"{package.relative_to(ROOT).as_posix()}/"][0]
        missing = [f.name for f in package.glob("*.py") if f.name != "__init__.py" and f"`{f.name}`" not in row]
        assert not missing, f"architecture.md's layout row for {package.name}/ does not name {missing}"


def test_site_builds_strict(tmp_path):
    """mkdocs build --strict: a broken link, anchor or API reference fails it."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").is_file()


def _run(block: Block, cwd: Path) -> tuple:
    """(exit code, output) of ``block`` run in ``cwd``; None for the code if it ran past the timeout."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MPLBACKEND": "Agg"}
    env.pop("PYTHONPATH", None)  # what a user's shell has: the examples import only what is installed
    # One torch thread unless the caller says otherwise: on a busy machine two spinning threads per run made a
    # one-minute example take twenty (measured on the 2-core CI machine beside other jobs).
    env.setdefault("OMP_NUM_THREADS", "1")
    command = ["bash", "-e", "-u", "-o", "pipefail", "-c", block.code] if block.lang == "bash" else \
        [sys.executable, "-"]
    # its own session, so that a timeout stops the whole block (a bash block's advbench runs included)
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(block.code if block.lang == "python" else "", timeout=TIMEOUT)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return None, proc.communicate()[0]


@pytest.mark.slow
@pytest.mark.skipif(not EXAMPLES, reason="the docs' examples run with ADVBENCH_DOCS_EXAMPLES=1 (make docs-check)")
@pytest.mark.parametrize("page", **PAGE_IDS)
def test_examples_run_as_written(page, tmp_path):
    """Each runnable block of ``page``, in order, in one fresh directory: exit code 0 within 60 s."""
    for block in blocks(page):
        if block.lang not in RUN or block.no_run is not None:
            continue
        code, out = _run(block, tmp_path)
        assert code is not None, f"{block}: still running after {TIMEOUT} s; make it shorter or mark it no-run " \
                                 f"with a reason\n{out[-2000:]}"
        assert code == 0, f"{block} exited {code}:\n{block.code}\n{out[-4000:]}"
