"""MkDocs hook: tables generated from the source tree when the site is built, so their numbers cannot drift.

``<!-- generated: package-sizes -->`` on a page becomes a table of advbench's packages: modules and lines of each.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "advbench"
MARKER = "<!-- generated: package-sizes -->"


def _lines(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def packages(package: Path = PACKAGE) -> list:
    """Every sub-package of advbench, nested ones (the task packages) included, in path order."""
    return sorted(d.parent for d in package.rglob("__init__.py") if d.parent != package and "conf" not in
                  d.relative_to(package).parts)


def package_sizes(package: Path = PACKAGE) -> list:
    """(package, modules, lines) for advbench's top level and each sub-package, in path order."""
    rows = [("advbench", sorted(package.glob("*.py")))]
    rows += [(f"advbench/{d.relative_to(package).as_posix()}", sorted(d.glob("*.py"))) for d in packages(package)]
    return [(name, len(files), sum(_lines(f) for f in files)) for name, files in rows]


def package_table(package: Path = PACKAGE) -> str:
    """The package sizes as a Markdown table, with a total row."""
    rows = package_sizes(package)
    lines = ["| package | modules | lines |", "| --- | ---: | ---: |"]
    lines += [f"| `{name}` | {modules} | {count} |" for name, modules, count in rows]
    lines.append(f"| total | {sum(r[1] for r in rows)} | {sum(r[2] for r in rows)} |")
    return "\n".join(lines)


def on_page_markdown(markdown, page, config, files, **kwargs):
    """Replace the marker by the table (MkDocs calls this for every page)."""
    return markdown.replace(MARKER, package_table()) if MARKER in markdown else markdown
