"""Issue 19, first part: one pipeline shared by threads, and plan files that are not plain files,
that are killed mid-save, or that replace a file of another mode. Never a hang, a traceback or a
wrong result: a clear error naming the file, or the right result."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from conftest import SIZE, components, generate

from edit import EditWanPipeline
from edit.cli import main
from edit.graph import Plan
from edit.graph.planfile import PlanFileError

STEPS = 3


# -- one pipeline, two threads --------------------------------------------------------------------------------

@pytest.mark.parametrize("cache", [None, "fbcache"])
def test_two_threads_calling_one_pipeline_get_what_each_call_alone_gets(cache):
    pipe = EditWanPipeline(**components())
    if cache:
        pipe.enable_cache(cache, rel_l1_thresh=0.3, granularity=2)
    alone = {seed: generate(pipe, seed=seed, num_inference_steps=STEPS) for seed in (1, 2)}
    results: dict[int, list] = {1: [], 2: []}
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            for _ in range(20):
                results[seed].append(generate(pipe, seed=seed, num_inference_steps=STEPS))
        except BaseException as err:  # a failure must reach the test, not die with the thread
            errors.append(err)
    threads = [threading.Thread(target=worker, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and not any(t.is_alive() for t in threads)
    for seed, outs in results.items():
        assert len(outs) == 20 and all(torch.equal(o, alone[seed]) for o in outs), seed


def test_a_pipeline_called_again_from_its_own_callback_is_refused():
    pipe = EditWanPipeline(**components())

    def again(p, step, timestep, kwargs):
        generate(p, num_inference_steps=STEPS)
        return {}
    with pytest.raises(RuntimeError, match="already running a call in this thread"):
        generate(pipe, num_inference_steps=STEPS, callback_on_step_end=again)
    assert generate(pipe, num_inference_steps=STEPS).shape[0] == 1  # and the pipeline still works


# -- plan files that are not plain files ----------------------------------------------------------------------

def _load_within(path, seconds: float = 20.0):
    """Plan.load(path) in a thread: returns its exception, failing if it is still blocked."""
    outcome: list[BaseException | None] = []

    def run():
        try:
            Plan.load(path)
            outcome.append(None)
        except BaseException as err:
            outcome.append(err)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"Plan.load({path}) blocked"
    return outcome[0]


def _specials(tmp_path):
    fifo = tmp_path / "f.json"
    os.mkfifo(fifo)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    return {"fifo": (fifo, "is a FIFO"), "directory": (tmp_path, "is a directory"),
            "/dev/zero": ("/dev/zero", "is a character device"),
            "/proc/self/mem": ("/proc/self/mem", "cannot read it"), "deep": (deep, "nested too deeply")}


@pytest.mark.parametrize("kind", ["fifo", "directory", "/dev/zero", "/proc/self/mem", "deep"])
def test_a_plan_file_that_is_not_one_is_refused_naming_it_without_blocking(tmp_path, kind, capsys):
    path, why = _specials(tmp_path)[kind]
    err = _load_within(path)
    assert isinstance(err, PlanFileError) and str(path) in str(err) and why in str(err), err
    code = main(["generate", "a fox", "--steps", "3", "--frames", "9", "--height", "32", "--width", "48",
                 "--out", str(tmp_path / "v.gif"), "--plan-file", str(path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("edit: error: --plan-file:") and why in lines[0]
    assert not (tmp_path / "v.gif").exists()


def test_cli_on_a_fifo_plan_file_exits_and_does_not_hang(tmp_path):
    fifo = tmp_path / "f.json"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", "edit", "generate", "a fox", "--plan-file", str(fifo),
                           "--out", str(tmp_path / "v.gif")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "is a FIFO" in proc.stderr


# -- saving: killed mid-save, modes, a full disk --------------------------------------------------------------------

def _plan():
    return EditWanPipeline(**components()).compile(STEPS, 5.0, **SIZE)


def test_a_save_killed_midway_leaves_the_old_file_and_no_temp_after_the_next_load(tmp_path):
    path = tmp_path / "p.json"
    _plan().save(path)
    old = path.read_bytes()
    child = textwrap.dedent(f"""
        import os, sys, time
        from edit.graph import Plan
        os.replace = lambda *a, **k: (print("written", flush=True), time.sleep(600))  # killed before the rename
        Plan.load({str(path)!r}).save({str(path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    temps = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert temps and path.read_bytes() == old  # the kill left its temp file; the plan is intact
    Plan.load(path)
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


def test_a_replaced_plan_keeps_its_mode_and_a_new_one_gets_the_umasks(tmp_path):
    path = tmp_path / "p.json"
    plan = _plan()
    plan.save(path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    path.chmod(0o640)
    plan.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "p.json"
    plan = _plan()
    plan.save(path)
    old = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match=f"{path}: could not write the plan \\(no space left on the device\\)"):
        plan.save(path)
    assert path.read_bytes() == old and [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


# -- plan-file types ---------------------------------------------------------------------------------------------

def _fb_plan_file(tmp_path):
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("fbcache", rel_l1_thresh=0.3, granularity=2)
    path = tmp_path / "p.json"
    pipe.compile(STEPS, 5.0, **SIZE).save(path)
    return path


def _edit_first(path, kind, field, value):
    import json

    data = json.loads(path.read_text())
    node = next(n for n in data["nodes"] if n["kind"] == kind)
    node[field] = value
    path.write_text(json.dumps(data).replace('"__BIG__"', "9" * 5000))
    return node["name"]


@pytest.mark.parametrize("kind, field, value, expected", [
    ("Cell", "step", "1", 'step: expected int, got "1"'),
    ("Cell", "blocks", ["0", "2"], "blocks: expected a list[int, int]"),
    ("Cell", "pin", {}, "pin: expected bool, got {}"),
    ("Prefetch", "issue", "s1.cond.u0", "issue: expected a list[int, str, int]"),
    ("Cell", "unit", "__BIG__", "unit: expected int, got a 5000-digit number"),
])
def test_a_plan_file_field_of_the_wrong_type_is_refused_naming_file_and_field(tmp_path, kind, field, value, expected,
                                                                              capsys):
    path = _fb_plan_file(tmp_path)
    if kind == "Prefetch":  # a plan with prefetches: a window's reads are certain
        pipe = EditWanPipeline(**components())
        pipe.enable_cache("none", granularity=2, prefetch=1, passes=[lambda g: __import__("edit").passes.set_cells(
            g, "reuse", steps=[2], units=[1])])
        pipe.compile(STEPS, 5.0, **SIZE).save(path)
    name = _edit_first(path, kind, field, value)
    with pytest.raises(PlanFileError) as caught:
        Plan.load(path)
    assert str(path) in str(caught.value) and f"%{name}" in str(caught.value) and expected in str(caught.value)
    code = main(["generate", "a fox", "--steps", "3", "--frames", "9", "--height", "32", "--width", "48",
                 "--out", str(tmp_path / "v.gif"), "--plan-file", str(path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and expected in lines[0]


def test_a_decide_cell_that_lost_its_probe_edge_is_refused_at_load(tmp_path):
    import json

    path = _fb_plan_file(tmp_path)
    data = json.loads(path.read_text())
    victim = next(n["name"] for n in data["nodes"] if n["kind"] == "Cell" and n["mode"] == "decide")
    data["edges"] = [e for e in data["edges"] if not (e[1] == victim and e[3] == "probe")]
    path.write_text(json.dumps(data))
    with pytest.raises(PlanFileError, match=f"%{victim}: its forward has a first-block probe, but no probe edge"):
        Plan.load(path)


# -- the editing API's contract ------------------------------------------------------------------------------------

def _two_unit_graph(steps: int = 5):
    from edit.graph import RunSpec, lower

    return lower(RunSpec(num_steps=steps, timesteps=[900.0 - 100 * i for i in range(steps)], num_blocks=4,
                         granularity=2))


def test_replace_all_uses_with_refuses_rewires_across_steps_branches_itself_and_cycles():
    from edit.passes import replace_all_uses_with

    g = _two_unit_graph()
    with pytest.raises(ValueError, match="new_node: %s2.cond.u0 is at step 2, %s1.cond.u0 at 1"):
        replace_all_uses_with(g, g.node("s1.cond.u0"), g.node("s2.cond.u0"))
    with pytest.raises(ValueError, match="new_node: %s1.uncond.u0 is at branch 'uncond', %s1.cond.u0 at 'cond'"):
        replace_all_uses_with(g, g.node("s1.cond.u0"), g.node("s1.uncond.u0"))
    with pytest.raises(ValueError, match="is %s1.cond.u0 itself"):
        replace_all_uses_with(g, g.node("s1.cond.u0"), g.node("s1.cond.u0"))
    with pytest.raises(ValueError, match="would make a cycle"):
        replace_all_uses_with(g, g.node("s1.cond.u0"), g.node("s1.cond.u1"))
    lowered = _two_unit_graph()
    old, new = lowered.node("s1.cond.u0"), lowered.node("s1.cond.embed")
    ok = replace_all_uses_with(lowered, old, new)  # within the forward, no cycle: allowed
    assert lowered.consumers(old) and not ok.consumers(old) and new in ok.inputs_of(ok.node("s1.cond.u1"))["hidden"]


def test_reroute_reuse_keeps_later_reuses_valid_and_a_repeat_is_a_no_op():
    from edit.graph import verify
    from edit.passes import reroute_reuse, set_cells

    g = set_cells(_two_unit_graph(), "reuse", steps=[2, 3], units=[1])  # s2, s3 read s1
    again = reroute_reuse(g, (3, "cond", 1), 1)
    assert reroute_reuse(again, (3, "cond", 1), 1) is again  # before: "new: ... already in the graph"
    # s1 computes and s2, s3 read it; making s1 a reuse of s0 re-points s2 and s3 to s0 (pinned)
    moved = verify(reroute_reuse(g, (1, "cond", 1), 0))
    assert moved.node("s1.cond.u1").source == 0 and {moved.node(f"s{s}.cond.u1").source for s in (2, 3)} == {0}


def test_set_cells_selecting_nothing_is_an_error_unless_asked_to_ignore():
    from edit.passes import set_cells

    g = _two_unit_graph()
    with pytest.raises(ValueError, match=r"steps: \[100\] match no cell of this graph"):
        set_cells(g, "reuse", steps=[100], units=[1])
    with pytest.raises(ValueError, match=r"units: \[7\] match no cell"):
        set_cells(g, "reuse", steps=[2], units=[7])
    assert set_cells(g, "reuse", steps=[100], units=[7], missing="ignore").summary() == \
        set_cells(g, "compute").summary()
    pipe = EditWanPipeline(**components())  # the README's --pass at the default stack granularity: no unit 1
    pipe.enable_cache("none", passes=[lambda graph: set_cells(graph, "reuse", steps=[2], units=[1])])
    with pytest.raises(ValueError, match=r"units: \[1\] match no cell of this graph \(units it has: \[0\]\)"):
        generate(pipe, num_inference_steps=STEPS)


# -- CLI flag combinations -------------------------------------------------------------------------------------------

RUN = ["generate", "a fox", "--steps", "3", "--frames", "9", "--height", "32", "--width", "48"]


@pytest.mark.parametrize("passes, expected", [
    ("set_cells(mode=reuse, steps=[99])", "--pass: steps: [99] match no cell of this graph"),
    ("set_cells(mode=reuse, mode=compute)", "--pass: set_cells: parameter 'mode' is given twice"),
    ("warm_start(window=[1], warm_steps=1)", "--pass: window: [1] holds generation(s) [1], not older"),
    ("set_cells(mode=reuse, steps=[0])", "--pass: %s0.cond.u0: cannot reuse"),
    ("regroup(granularity=2)", "--pass: graph: regroup must run before apply_policy"),
])
def test_a_pass_that_cannot_apply_is_one_line_naming_the_flag(tmp_path, capsys, passes, expected):
    code = main([*RUN, "--out", str(tmp_path / "v.gif"), "--pass", passes])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "v.gif").exists()


@pytest.mark.parametrize("flags, expected", [
    (["--pass", "dce"], "--pass: a --plan-file plan is already compiled"),
    (["--granularity", "2"], "--granularity: a --plan-file plan is already compiled"),
    (["--cache", "teacache"], "--cache: the --plan-file plan has no cache cells"),
])
def test_flags_a_plan_file_would_ignore_are_refused(tmp_path, capsys, flags, expected):
    path = tmp_path / "p.json"
    assert main(["plan", "a fox", "--steps", "3", "--frames", "9", "--height", "32", "--width", "48",
                 "--save", str(path)]) == 0
    capsys.readouterr()
    code = main([*RUN, "--out", str(tmp_path / "v.gif"), "--plan-file", str(path), *flags])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines


def test_stats_json_without_a_cache_still_prints_one_json_line(tmp_path, capsys):
    import json

    assert main([*RUN, "--out", str(tmp_path / "v.gif"), "--stats", "json"]) == 0
    found = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert found and found[-1]["cache"] is None and "step" in found[-1]["summary"]


# -- silently doing nothing, friction -------------------------------------------------------------------------------

def test_policy_registry_and_arguments_say_what_is_wrong():
    from edit.cache import CachePolicy, register_policy
    from edit.passes import make_policy

    with pytest.raises(TypeError, match=r"policy: teacache has no argument 'bogus' \(arguments: rel_l1_thresh"):
        make_policy("teacache", bogus=1)

    @register_policy("hardening_probe")
    class First(CachePolicy):
        def should_compute(self, ctx):
            return True
    with pytest.raises(TypeError, match=r"policy: hardening_probe has no argument 'foo' \(it takes none\)"):
        make_policy("hardening_probe", foo=1)
    with pytest.warns(UserWarning, match="register_policy\\('hardening_probe'\\): replaces .*First with .*Second"):
        @register_policy("hardening_probe")
        class Second(CachePolicy):
            def should_compute(self, ctx):
                return True


def test_bare_edit_prints_the_usage_and_stats_have_a_repr(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: edit") and "generate" in err and "plan" in err
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("fbcache", rel_l1_thresh=0.3)
    generate(pipe, num_inference_steps=STEPS)
    assert repr(pipe.cache.stats).startswith("<CacheStats computed=") and "trace={('cond', 0):" in repr(pipe.cache.stats)


def test_a_plan_file_gives_its_steps_size_and_guidance_and_a_contradicting_flag_is_refused_before_loading(
        tmp_path, capsys):
    path = tmp_path / "p.json"
    assert main(["plan", "a fox", "--steps", "4", "--frames", "9", "--height", "32", "--width", "48",
                 "--guidance", "3.0", "--save", str(path)]) == 0
    capsys.readouterr()
    assert main(["generate", "a fox", "--out", str(tmp_path / "v.gif"), "--plan-file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "generated 9 frames of 48x32" in out and "(4 steps," in out
    code = main(["generate", "a fox", "--out", str(tmp_path / "w.gif"), "--plan-file", str(path), "--steps", "20"])
    captured = capsys.readouterr()
    assert code == 2 and "loaded" not in captured.out  # refused before the model loads
    assert captured.err.strip() == ("edit: error: --steps: the --plan-file plan was compiled for 4, this call asks "
                                    "for 20; drop --steps (the plan's is used) or compile another plan")


def test_the_grid_after_a_run_shows_what_ran(tmp_path, capsys):
    assert main([*RUN, "--steps", "6", "--out", str(tmp_path / "v.gif"), "--cache", "fbcache", "--threshold",
                 "0.3"]) == 0
    out = capsys.readouterr().out
    grid = out[out.index("run (C = computed"):].splitlines()[2:8]
    assert [row.split()[1:] for row in grid] == [["C", "C"]] + [["S", "S"]] * 5  # no "?" left


def test_published_teacache_coefficients_on_another_architecture_warn_once(recwarn):
    from edit import checks

    checks._WARNED.clear()
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("teacache")
    pipe.enable_cache("teacache", rel_l1_thresh=0.3)
    messages = [str(w.message) for w in recwarn if "teacache:" in str(w.message)]
    assert messages == ["teacache: the t2v-1.3B coefficients were fitted on 30 layers of width 1536; this "
                        "transformer has 4 layers of width 24. Fit its own with edit.cache.calibrate_teacache and "
                        "pass coefficients=..."]
    pipe.enable_cache("teacache", coefficients=[1.0, 0.0])  # its own: nothing to say
    assert len([w for w in recwarn if "teacache:" in str(w.message)]) == 1
