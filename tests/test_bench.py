"""The caching benchmark script runs end to end on a small size and its derived figures are consistent."""

from __future__ import annotations

import json
import math

import pytest

import bench
from conftest import components
from edit import EditWanPipeline

SMOKE = ["--config", "tiny", "--steps", "8", "--frames", "9", "--height", "32", "--width", "48", "--repeats", "1"]


def run_bench(tmp_path, *extra):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    result = bench.main([*SMOKE, "--out", str(out), "--md", str(md), *extra])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    return result, md.read_text()


def test_amdahl_bound():
    assert bench.amdahl_bound(0.25, 0.0) == 1.0
    assert bench.amdahl_bound(0.25, 1.0) == pytest.approx(4.0)
    assert bench.amdahl_bound(0.0, 0.5) == pytest.approx(2.0)


def test_psnr():
    import numpy as np
    a = np.zeros((2, 3))
    assert math.isinf(bench.psnr(a, a))
    assert bench.psnr(a + 0.1, a) == pytest.approx(20.0)


def test_bench_table_is_consistent(tmp_path):
    result, table = run_bench(tmp_path, "--fbcache", "0.15,0.3")
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["No cache", "TeaCache 0.1", "TeaCache 0.2", "TeaCache 0.3", "FBCache 0.15", "FBCache 0.3"]
    fit = result["meta"]["teacache_calibration"]  # embedded model: coefficients fitted on other prompts
    assert fit["samples"] == 2 * 2 * (8 - 1) and len(fit["coefficients"]) == 5
    assert rows["TeaCache 0.3"]["kwargs"]["coefficients"] == fit["coefficients"]
    base = rows["No cache"]
    assert base["speedup"] == 1.0 and base["blocks_skipped"] == 0.0 and base["psnr_db"] is None
    fixed = result["meta"]["fixed_fraction"]
    assert 0.0 < fixed < 1.0
    num_blocks = 4  # the tiny model
    for row in result["rows"]:
        assert row["deterministic"], row["name"]
        assert row["amdahl_bound"] == pytest.approx(bench.amdahl_bound(fixed, row["blocks_skipped"]), abs=1e-3)
        assert row["efficiency"] == pytest.approx(row["speedup"] / row["amdahl_bound"], abs=1e-3)
        assert row["peak_memory_bytes"] > 0
        if row["policy"] is None:
            continue
        traces = row["trace"]
        assert set(traces) == {"cond:0", "uncond:0"}
        skipped = sum(t.count("S") for t in traces.values()) / sum(len(t) for t in traces.values())
        blocks_per_skip = (num_blocks - 1) / num_blocks if row["policy"] == "fbcache" else 1.0
        assert row["blocks_skipped"] == pytest.approx(skipped * blocks_per_skip, abs=1e-3)
        assert row["steps_skipped"] == pytest.approx(skipped, abs=1e-3)
        # A run that reused anything differs from the uncached video; one that reused nothing is identical.
        assert (row["psnr_db"] is None) == (skipped == 0), row["name"]
    assert rows["TeaCache 0.3"]["blocks_skipped"] > 0 and rows["FBCache 0.3"]["blocks_skipped"] > 0
    assert table.count("\n| ") == 1 + len(rows)  # header + one line per configuration


def test_bench_loads_a_saved_checkpoint(tmp_path):
    EditWanPipeline(**components()).save_pretrained(tmp_path / "ckpt")
    result, _ = run_bench(tmp_path, "--model", str(tmp_path / "ckpt"), "--teacache", "0,0,0", "--fbcache", "0,0")
    assert result["meta"]["model"] == str(tmp_path / "ckpt")
    assert result["meta"]["teacache_calibration"] is None  # trained weights: the published coefficients
    assert result["rows"][1]["kwargs"]["wan_variant"] == "t2v-1.3B"
    assert result["meta"]["dtype"] == "float32"
    for row in result["rows"]:  # threshold 0 never skips: every video equals the uncached one
        assert row["blocks_skipped"] == 0.0 and row["psnr_db"] is None, row["name"]


@pytest.mark.parametrize("flag, value, message", [
    ("--teacache", "0.1,0.2", "expected 3 values"),
    ("--fbcache", "0.1,x", "comma-separated numbers"),
    ("--teacache", "0.1,-0.2,0.3", "must be >= 0"),
])
def test_bench_rejects_bad_thresholds(tmp_path, flag, value, message):
    with pytest.raises(SystemExit, match=message):
        run_bench(tmp_path, flag, value)
