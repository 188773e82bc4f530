"""The searched schedule on the trained toy Wan, held-out prompts and seeds: at the smallest budget
(about 70% of the cells reused), its PSNR against the uncached video beats each baseline's at the
same computed cells — TeaCache (the toy's calibrated coefficients), FBCache, MagCache (calibrated)
and a FORA schedule. The benchmark (`tests/bench_quality.py`) reports all three budgets."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

from edit.toy.model import WEIGHTS

sys.path.insert(0, str(Path(__file__).parent))
pytestmark = pytest.mark.skipif(not (WEIGHTS / "model_index.json").is_file(),
                                reason="no trained toy weights in edit/toy/weights (python -m edit.toy.train)")

STEPS = 30
SIZE = dict(height=64, width=64, num_frames=17)


def test_the_searched_plan_beats_every_baseline_at_the_smallest_budget():
    import edit
    from bench_quality import LastBlockCounter, edit_metrics, fora_passes, held_out_prompts, run
    from edit.cache import calibrate_magcache
    from edit.passes import Searched
    from edit.passes.search import solve
    from edit.search import measure_edges
    from edit.toy import data

    base = edit.toy_pipeline()
    components = dict(base.components)

    def pipeline():
        pipe = edit.EditWanPipeline(**components)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    held = held_out_prompts(3)[1:]  # the benchmark's held-out captions; seeds 1000, 1001
    calibration = [c.caption for c in data.batch(777, 2, two=0)]  # neither held out nor the benchmark's
    reference = pipeline()
    references = [run(reference, p, 1000 + i, STEPS)[0] for i, p in enumerate(held)]
    costs = measure_edges(pipeline(), calibration, num_inference_steps=STEPS, seeds=[1, 2], **SIZE).combined()
    ratios = calibrate_magcache(pipeline(), calibration[:1], num_inference_steps=STEPS, seed=1, **SIZE).ratios

    def score(enable) -> tuple[float, float]:
        pipe = pipeline()
        enable(pipe)
        counter = LastBlockCounter(pipe.transformer)
        psnr, computed = [], []
        for i, prompt in enumerate(held):
            counter.calls = 0
            frames, _ = run(pipe, prompt, 1000 + i, STEPS)
            psnr.append(edit_metrics(frames, references[i])["psnr"])
            computed.append(counter.calls / (2 * STEPS))
        counter.close()
        return statistics.median(psnr), max(computed)

    baselines = {
        "teacache 0.3": lambda p: p.enable_cache("teacache", rel_l1_thresh=0.3),
        "fbcache 0.3": lambda p: p.enable_cache("fbcache", rel_l1_thresh=0.3),
        "magcache 0.3": lambda p: p.enable_cache("magcache", mag_ratios=ratios, threshold=0.3, max_skip_steps=4),
        "fora 4": lambda p: p.enable_cache("none", passes=fora_passes(STEPS, 4)),
    }
    for name, enable in baselines.items():
        psnr, computed = score(enable)
        assert computed <= 0.4, (name, computed)  # about 70% of the cells reused
        schedule = solve(costs, STEPS, int(computed * STEPS + 1e-9), "sum")  # no more computes than it had
        searched, searched_computed = score(lambda p: p.enable_cache("none", passes=[Searched.of(schedule)]))
        assert searched_computed <= computed
        assert searched > psnr, (name, searched, psnr, schedule.computed)
