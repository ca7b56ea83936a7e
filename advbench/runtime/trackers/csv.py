"""The csv tracker: csv/metrics.csv, csv/hparams.csv and csv/results.csv in the run directory."""
import csv
import io
from pathlib import Path

from advbench.runtime.outputs import atomic_write
from advbench.runtime.trackers.common import final_metrics, flat


class CSV:
    """csv/metrics.csv (one row per epoch, every column seen so far), csv/hparams.csv and csv/results.csv."""

    def __init__(self, out: Path, settings, previous: dict | None = None, resumed: int | None = None):
        self.dir, self.rows = out / "csv", []
        self.dir.mkdir(exist_ok=True)
        if resumed and (self.dir / "metrics.csv").exists():  # the epochs before the resume point stay
            with open(self.dir / "metrics.csv", newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r.get("epoch") or 0) <= resumed]

    def ids(self) -> dict:
        return {}

    def _write(self, name: str, rows: list) -> None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.dir / name, lambda f: f.write(text.getvalue().encode()))  # a full disk leaves no half file

    def hyperparams(self, config: dict) -> None:
        self._write("hparams.csv", [{"key": k, "value": v} for k, v in flat(config).items()])

    def metrics(self, row: dict, step: int) -> None:
        self.rows.append(row)
        self._write("metrics.csv", self.rows)

    def results(self, results: dict, out: Path) -> None:
        self._write("results.csv", [final_metrics(results)])

    def close(self, failed: BaseException | None = None) -> None:
        pass
