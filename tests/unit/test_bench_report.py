"""bench/_report.py (the tables and plots every benchmark writes) and bench/transfer.py at its smallest settings."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from _report import Panel, Report, Series, markdown  # noqa: E402


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_markdown_cells_and_rows():
    text = markdown(["a", "b", "c"], [[1, 0.012345, math.nan], ["x", 1234.5, "-"]])
    assert text.splitlines() == ["| a | b | c |", "| --- | --- | --- |", "| 1 | 0.0123 | - |", "| x | 1234 | - |"]


def test_report_writes_markdown_json_and_a_png_per_plot(tmp_path, capsys):
    report = Report("demo", tmp_path / "out")
    report.table("demo: a title", ["n", "GB/s"], [[1, 0.5], [2, 1.25]], notes=["a note"], extra={"k": 3})
    report.lines("demo_plot", [Panel("p1", "x", "y", [Series("s", [1, 2], [3, 4])]),
                               Panel("p2", "x", "y", [Series("r", [1, 2], [1, 1], "--")], logx=True)], "two")
    report.done()
    md = (tmp_path / "out" / "demo.md").read_text()
    assert md.startswith("# demo: a title\n\n| n | GB/s |") and "| 2 | 1.25 |" in md and "a note" in md
    doc = json.loads((tmp_path / "out" / "demo.json").read_text())
    assert doc["rows"] == [{"n": 1, "GB/s": 0.5}, {"n": 2, "GB/s": 1.25}] and doc["k"] == 3
    width, height = _png_size(tmp_path / "out" / "demo_plot.png")
    assert width > 2 * height  # two panels side by side
    out = capsys.readouterr().out
    assert "| 1 | 0.5 |" in out and str(tmp_path / "out" / "demo_plot.png") in out


@pytest.mark.timeout(120)
def test_transfer_bench_smallest_run_writes_its_table_and_plot(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "transfer.py"), "--repeats", "1", "--tokens",
                           "64", "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=110,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "transfer.json").read_text())
    rows = doc["rows"]
    pages = 64 // 16
    # 2 dtypes x (3 fragmentations x 2 methods + one entry + memcpy)
    assert len(rows) == 16 and {r["dtype"] for r in rows} == {"fp32", "bf16"}
    for r in rows:
        if r["method"] == "(b) page x layer":
            assert r["entries"] == pages * 30  # one entry per page per layer
        if r["method"] == "(c) one entry":
            assert r["entries"] == 1
        assert r["GB/s"] > 0
    assert (tmp_path / "transfer.md").read_text().count("\n| ") == 18  # header, separator, 16 rows
    _png_size(tmp_path / "transfer_gbps.png")


def test_kernels_report_plots_decode_bandwidth_against_context(tmp_path):
    pytest.importorskip("triton")
    import importlib.util

    # bench/kernels.py by path (the repository also has a `kernels` package); measuring needs CUDA, reporting not
    spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "bench" / "kernels.py")
    bench_kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_kernels)

    bench_kernels.ROWS[:] = [("decode B64 ctx512", "1000 GB/s", "default config")]
    res = {"device": "test", "copy_gbs": 4000.0, "decode_vs_context_gbs": {512: 1000.0, 4096: 3000.0}}
    bench_kernels.write_report(res, tmp_path)
    doc = json.loads((tmp_path / "kernels.json").read_text())
    assert doc["rows"] == [{"what": "decode B64 ctx512", "value": "1000 GB/s", "note": "default config"}]
    assert doc["results"]["decode_vs_context_gbs"] == {"512": 1000.0, "4096": 3000.0}
    _png_size(tmp_path / "kernels_decode_context.png")
