"""Several ranks on torch.distributed (gloo, CPU): CFG-parallel and sequence-parallel runs against
one process, plans and decisions agreed across ranks, a rank that dies, the CLI under a layout.

Each test starts its ranks itself (`spawn`: fresh processes, as torchrun's), runs several
scenarios in them (`parallel_worker.py`), and reads what every rank wrote.
"""

from __future__ import annotations

import multiprocessing
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import parallel_worker as worker

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with the gloo backend")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path: Path, layout: tuple[int, int], scenarios: list[str], deadline: float = 90.0) -> list[int]:
    """Run `scenarios` on cfg*sequence spawned ranks; their exit codes (killed past the deadline)."""
    world = layout[0] * layout[1]
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=worker.main, args=(rank, world, port, layout, scenarios, str(tmp_path)))
             for rank in range(world)]
    for p in procs:
        p.start()
    end = time.monotonic() + deadline
    for p in procs:
        p.join(max(0.0, end - time.monotonic()))
    codes = []
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
        codes.append(p.exitcode)
    return codes


def result(tmp_path: Path, name: str, rank: int) -> dict:
    path = tmp_path / f"{name}.{rank}.pt"
    assert path.exists(), f"rank {rank} wrote nothing for {name}"
    return torch.load(path, weights_only=False)


def ok(tmp_path: Path, name: str, rank: int) -> dict:
    out = result(tmp_path, name, rank)
    assert "error" not in out, out.get("traceback")
    return out


@pytest.fixture(scope="module")
def cfg_run(tmp_path_factory):
    """Two ranks, one CFG branch each: every cache scenario, the mismatch, the CLI."""
    out = tmp_path_factory.mktemp("cfg")
    codes = launch(out, (2, 1), ["plain", "teacache", "fbcache", "fbcache-per-block", "wan22-teacache", "mismatch",
                                 "cli"])
    assert codes == [0, 0], codes
    return out


@pytest.fixture(scope="module")
def sp_run(tmp_path_factory):
    """Two ranks, each with half of every forward's tokens."""
    out = tmp_path_factory.mktemp("sp")
    codes = launch(out, (1, 2), ["plain", "fbcache", "fbcache-per-block", "shard-signal", "disagree"])
    assert codes == [0, 0], codes
    return out


@pytest.mark.parametrize("scenario", ["plain", "teacache", "fbcache", "fbcache-per-block", "wan22-teacache"])
def test_cfg_parallel_equals_one_process(cfg_run, scenario):
    ref = worker.single(scenario)
    if ref["trace"] is not None:  # the cache did skip: the comparison covers reuse
        assert any("S" in t for t in ref["trace"].values()), ref["trace"]
    ranks = [ok(cfg_run, scenario, r) for r in range(2)]
    for out in ranks:
        assert torch.equal(out["latents"], ref["latents"])
    assert ranks[0]["text"] == ranks[1]["text"]  # one folded plan, on every rank
    if ref["trace"] is not None:
        assert ranks[0]["trace"] == ranks[1]["trace"] == ref["trace"]  # gathered: the whole run on every rank
        assert [r["branches"] for r in ranks[0]["ranks"]] == [["cond"], ["uncond"]]
        assert all(c in "CS" for t in ref["trace"].values() for c in t)
        assert ranks[0]["computed"] + ranks[0]["skipped"] == sum(len(t) for t in ref["trace"].values())
        for rank, out in enumerate(ranks):  # each rank stored only its own branch's residuals
            branches = {k[k.index("cond" if "cond" in k else "uncond")] for k in out["keys"]}
            assert out["keys"] and branches == {("cond", "uncond")[rank]}, out["keys"]


def test_the_placed_plan_prints_its_exchange(cfg_run):
    text = ok(cfg_run, "plain", 0)["text"]
    assert "%s0.exchange = exchange(cond=%s0.cond.head, uncond=%s0.uncond.head) placement=cond@0,uncond@1" in text
    assert "%s0.guide = guide(cond=%s0.exchange.cond, uncond=%s0.exchange.uncond)" in text


def test_cfg_parallel_moves_one_prediction_per_step(cfg_run):
    out = ok(cfg_run, "plain", 0)
    latents = out["latents"]
    # one all-gather per step: each rank sends its branch's noise prediction (the latents' size)
    assert out["bytes_moved"] == worker.STEPS * latents.numel() * latents.element_size()


def test_different_plans_stop_every_rank_naming_the_cell(cfg_run):
    errors = [result(cfg_run, "mismatch", r).get("error", "") for r in range(2)]
    assert errors[0] == errors[1], errors
    assert errors[0].startswith("ParallelError: parallel: rank 1 compiled another plan than rank 0, first at %s"), errors
    assert "mode=" in errors[0] and ".cond.u0" in errors[0]


@pytest.mark.parametrize("scenario", ["plain", "fbcache", "fbcache-per-block"])
def test_sequence_parallel_is_close_and_decides_alike(sp_run, scenario):
    ref = worker.single(scenario)
    ranks = [ok(sp_run, scenario, r) for r in range(2)]
    for out in ranks:
        torch.testing.assert_close(out["latents"], ref["latents"], rtol=1e-4, atol=1e-5)
    assert torch.equal(ranks[0]["latents"], ranks[1]["latents"])  # one video, on every rank
    if ref["trace"] is not None:
        assert ranks[0]["trace"] == ranks[1]["trace"] == ref["trace"]
        assert all("S" in t for t in ref["trace"].values())
        for rank, out in enumerate(ranks):
            assert out["recomputed"] == 0  # every reuse found its residual on the rank that wrote it
            assert out["keys"] and all(k[0].endswith(f"@rank{rank}.shard{rank}of2") for k in out["keys"]), out["keys"]
            assert out["ranks"][rank]["shard"] == rank


def test_a_shard_signal_is_reduced_before_the_threshold(sp_run):
    ranks = [ok(sp_run, "shard-signal", r) for r in range(2)]
    seen = [r["seen"] for r in ranks]
    assert len(seen[0]) == len(seen[1]) > 0
    local = [[s[2] for s in r] for r in seen]
    agreed = [[s[3] for s in r] for r in seen]
    assert local[0] != local[1]  # each shard alone would decide from another number
    assert agreed[0] == agreed[1]  # the reduced signal is the same on both ranks
    assert ranks[0]["trace"] == ranks[1]["trace"] and "S" in "".join(ranks[0]["trace"].values())
    assert torch.equal(ranks[0]["latents"], ranks[1]["latents"])


def test_ranks_that_decide_differently_stop_with_one_error(sp_run):
    outs = [result(sp_run, "disagree", r) for r in range(2)]
    for out in outs:
        assert "decided %s1.cond.u0 differently (ranks [1] compute, ranks [0] reuse)" in out.get("error", ""), out
        assert out["seconds"] < 15  # caught at the cell, not after a collective's timeout


def test_a_killed_rank_ends_the_run_on_the_others(tmp_path):
    start = time.monotonic()
    codes = launch(tmp_path, (2, 1), ["killed"], deadline=60)
    assert codes[1] == 3 and codes[0] == 0, codes
    error = result(tmp_path, "killed", 0).get("error", "")
    assert error.startswith("ParallelError: parallel: rank 0: the all-gather of %s3.exchange failed"), error  # it died after step 2
    assert time.monotonic() - start < 45


def test_the_cli_writes_once_on_rank_0(cfg_run, tmp_path, capsys):
    import imageio.v3 as iio

    from edit.cli import main

    assert [ok(cfg_run, "cli", r)["code"] for r in range(2)] == [0, 0]
    assert (cfg_run / "cli.0.gif").exists() and not (cfg_run / "cli.1.gif").exists()
    single = tmp_path / "one.gif"
    assert main(["generate", worker.PROMPT, "--model", "tiny", "--steps", "4", "--frames", "9", "--height", "32",
                 "--width", "48", "--cache", "fbcache", "--threshold", "0.2", "--out", str(single)]) == 0
    assert (iio.imread(cfg_run / "cli.0.gif") == iio.imread(single)).all()


# -- one process: the layout's checks, and placed plans without ranks ---------------------------

def test_parallel_flags_are_checked_before_loading(capsys, monkeypatch, tmp_path):
    from edit.cli import main

    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "x.gif"
    for layout, message in [("cfg=3", "--parallel: cfg: expected 1 or 2"),
                            ("tp=2", "--parallel: expected cfg=N and/or sp=N"),
                            ("cfg=2", "--parallel: cfg=2 needs 2 processes; start them with torchrun --nproc-per-node 2")]:
        assert main(["generate", "a fox", "--model", "tiny", "--parallel", layout, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("edit: error: ") and message in err and len(err.strip().splitlines()) == 1, err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    assert main(["generate", "a fox", "--model", "tiny", "--parallel", "cfg=2", "--out", str(out)]) == 2
    assert "--parallel: cfg=2 needs 2 processes, torchrun started 4" in capsys.readouterr().err
    assert not out.exists()


def test_enable_parallelism_without_torchrun_is_refused(monkeypatch):
    import edit

    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    pipe = edit.tiny_pipeline()
    with pytest.raises(ValueError, match="torchrun --nproc-per-node 2"):
        pipe.enable_parallelism(cfg=2)
    with pytest.raises(ValueError, match="sequence: expected an int >= 1"):
        pipe.enable_parallelism(cfg=2, sequence=0)
    assert pipe.parallel is None


def test_a_placed_plan_saves_loads_and_is_refused_in_one_process(tmp_path):
    import edit
    from edit.graph import Exchange, Plan, RunSpec, verify
    from edit.passes import Pipeline, Place
    from edit.passes.compiler import ModelInfo, compile_plan

    spec = RunSpec(num_steps=3, timesteps=[999.0, 600.0, 200.0], num_blocks=2)
    plan, _ = compile_plan(spec, ModelInfo("transformer", 2, {}), placement=Place(cfg=2, sequence=2))
    assert plan.pipeline == "place(cfg=2, sequence=2)" and Pipeline.parse(plan.pipeline).passes == (Place(2, 2),)
    assert len(plan.find(Exchange)) == 3
    loaded = Plan.load(plan.save(tmp_path / "p.json"), bind=False)
    assert loaded.to_text() == plan.to_text()
    verify(loaded)
    with pytest.raises(ValueError, match="cfg=2 needs two CFG branches"):
        compile_plan(RunSpec(num_steps=2, timesteps=[999.0, 500.0], num_blocks=2, branches=("cond",),
                             guidance_scale=1.0), ModelInfo("transformer", 2, {}), placement=Place(cfg=2))

    pipe = edit.tiny_pipeline()
    placed = pipe.compile(2, 5.0, height=32, width=48, num_frames=9)
    placed.fingerprint["parallel"] = "place(cfg=2)"
    with pytest.raises(ValueError, match="plan: it was compiled for place\\(cfg=2\\), this pipeline runs in one"):
        pipe("a fox", num_inference_steps=2, height=32, width=48, num_frames=9, plan=placed, output_type="latent")
