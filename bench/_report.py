"""What every bench/ script shares: where results go, the table as Markdown and JSON, matplotlib plots, and
progress bars.

    report = Report("transfer", out_dir)            # bench/out/ by default (--out-dir)
    with progress(total=n, desc="transfer") as bar: ...
    report.table(title, columns, rows, notes)       # prints it; bench/out/transfer.md and transfer.json
    report.lines("transfer_gbps", [Panel(...)], title)   # bench/out/transfer_gbps.png
    report.done()                                   # prints the paths written
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

OUT_DIR = Path(__file__).resolve().parent / "out"


def add_out_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR,
                        help=f"where the Markdown/JSON tables and PNG plots go (default: {OUT_DIR})")


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it") -> tqdm:
    """A progress bar on stderr (stdout keeps the tables clean)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)


@dataclass
class Series:
    label: str
    x: Sequence[float]
    y: Sequence[float]
    style: str = "-o"  # matplotlib format string; "--" for a reference line


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    logx: bool = False
    logy: bool = False
    xticks: Sequence[float] | None = None


def markdown(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


class Report:
    """The outputs of one benchmark run, all named after the benchmark."""

    def __init__(self, name: str, out_dir: Path = OUT_DIR) -> None:
        self.name, self.out_dir = name, Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.written: list[Path] = []

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[object]],
              notes: Sequence[str] = (), extra: dict | None = None, name: str | None = None) -> str:
        """Print the table; write NAME.md (title, table, notes) and NAME.json (rows as objects, plus `extra`)."""
        name = name or self.name
        text = markdown(columns, rows)
        body = f"# {title}\n\n{text}\n" + "".join(f"\n{n}\n" for n in notes)
        print(f"\n{title}\n\n{text}" + "".join(f"\n\n{n}" for n in notes), flush=True)
        self._write(f"{name}.md", body)
        doc = {"benchmark": self.name, "title": title, "columns": list(columns),
               "rows": [dict(zip(columns, r, strict=True)) for r in rows], "notes": list(notes), **(extra or {})}
        self._write(f"{name}.json", json.dumps(doc, indent=2, default=_jsonable) + "\n")
        return text

    def lines(self, name: str, panels: Sequence[Panel], title: str) -> Path:
        """One PNG with a panel per `Panel`, side by side: line plots of each series."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
        for ax, panel in zip(axes[0], panels, strict=True):
            for s in panel.series:
                ax.plot(list(s.x), list(s.y), s.style, label=s.label)
            ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
            if panel.logx:
                ax.set_xscale("log", base=2)
            if panel.logy:
                ax.set_yscale("log")
            if panel.xticks is not None:
                ax.set_xticks(list(panel.xticks), [f"{t:g}" for t in panel.xticks])
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(title)
        fig.tight_layout()
        path = self.out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        self.written.append(path)
        return path

    def done(self) -> None:
        print(f"\n{self.name}: wrote " + ", ".join(str(p) for p in self.written), flush=True)

    def _write(self, filename: str, text: str) -> None:
        path = self.out_dir / filename
        path.write_text(text)
        self.written.append(path)


def _jsonable(v: object) -> object:
    return v.item() if hasattr(v, "item") else str(v)
