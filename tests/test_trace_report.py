"""benchmarks/trace_report.py: a kernel trace summed by kernel, and the DRAM rate of the
streaming kernels from the shape of the layer that launched them."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import trace_report  # noqa: E402

FIELDS = ["gpu", "model", "batch", "index", "kernel", "us", "layer", "kind", "phase", "shape"]
ROWS = [
    ["H", "net", 512, 0, "gather_augment_kernel", 5.0, "", "", "", ""],
    ["H", "net", 512, 1, "bn_apply_kernel", 100.0, "1", "BatchNorm2d", "forward",
     "(512, 64, 32, 32)"],
    ["H", "net", 512, 2, "bn_apply_kernel", 10.0, "4", "BatchNorm2d", "forward",
     "(512, 64, 8, 8)"],
    ["H", "net", 512, 3, "conv2d_fwd_kernel", 300.0, "0", "Conv2d", "forward",
     "(512, 3, 32, 32)"],
]  # fmt: skip


def _write(tmp_path: Path, rows=ROWS, fields=FIELDS) -> Path:
    path = tmp_path / "trace.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        w.writerows(rows)
    return path


def test_rate_of_a_streaming_kernel_is_its_passes_over_the_layer_tensor(tmp_path):
    rows = trace_report.read_trace(_write(tmp_path))
    # bn_apply: x in, y out, fp16: 2 * 2 bytes * 512*64*32*32 in 100 us
    assert trace_report.tb_per_s(rows[1]) == pytest.approx(4 * 512 * 64 * 32 * 32 / 100e-6 / 1e12)
    assert trace_report.tb_per_s(rows[3]) is None  # a conv: not a streaming kernel
    assert trace_report.tb_per_s(rows[0]) is None  # no layer, no shape
    assert trace_report.by_kernel(rows)[0] == ("conv2d_fwd_kernel", 1, 300.0)
    assert trace_report.by_kernel(rows)[1] == ("bn_apply_kernel", 2, 110.0)


def test_report_names_the_slowest_layers(tmp_path, monkeypatch, capsys):
    path = _write(tmp_path)
    monkeypatch.setattr(sys, "argv", ["trace_report.py", str(path)])
    trace_report.main()
    out = capsys.readouterr().out
    assert "net b512: 4 kernels, 0.41 ms" in out
    slowest = out.split("bn_apply_kernel: median")[1].splitlines()[1]
    assert slowest.split()[0] == "4", out  # the 8x8 layer: 0.84 TB/s against 1.34
    argv = ["trace_report.py", str(path), "--kernel", "conv2d_fwd_kernel"]
    monkeypatch.setattr(sys, "argv", argv)
    trace_report.main()
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("    ")]
    assert len(listed) == 1 and listed[0].split()[:3] == ["0", "Conv2d", "forward"], listed


def test_old_traces_without_layers_still_sum(tmp_path, monkeypatch, capsys):
    old = [row[:6] for row in ROWS]
    path = _write(tmp_path, old, FIELDS[:6])
    monkeypatch.setattr(sys, "argv", ["trace_report.py", str(path)])
    trace_report.main()
    assert "no layer columns" in capsys.readouterr().out


def test_time_over_the_floor(tmp_path, monkeypatch, capsys):
    """The streaming kernels' time beyond their bytes at --floor TB/s, summed per kernel."""
    rows = trace_report.read_trace(_write(tmp_path))
    need = 4 * 512 * 64 * 8 * 8 / 2.0e12 * 1e6  # the 8x8 apply's bytes at 2 TB/s, in us
    assert trace_report.over_floor_us(rows[2], 2.0) == pytest.approx(10.0 - need)
    assert trace_report.over_floor_us(rows[1], 1.0) == 0.0  # faster than the floor
    assert trace_report.over_floor_us(rows[3], 2.0) == 0.0  # not a streaming kernel
    monkeypatch.setattr(sys, "argv", ["trace_report.py", str(_write(tmp_path)), "--floor", "2"])
    trace_report.main()
    out = capsys.readouterr().out
    big = 100.0 - 4 * 512 * 64 * 32 * 32 / 2.0e12 * 1e6
    assert f"{10.0 - need + big:.0f} us over 2.0 TB/s" in out, out
