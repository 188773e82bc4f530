"""Pipeline text is lossless: every built-in pass, policies with all their arguments included,
prints as text that parses back to an equal pipeline (issue 14, "Lossless plans")."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edit.graph import CELL_MODES, Plan, RunSpec, lower
from edit.passes import (ApplyPolicy, CachePolicy, Dce, FoldStatic, Pipeline, Regroup, SchedulePrefetch, SetCells,
                         WarmStart, default_pipeline, make_policy, pipeline_policy, plan_policy, register_policy)
from edit.passes.policies import TEACACHE_COEFFICIENTS, FirstBlockCache, TeaCache, WarmstartReuse

FAST = settings(max_examples=100, deadline=None)


@register_policy("text_drift")
class Drift(CachePolicy):
    """A user policy with no params() of its own: its arguments are captured when it is built."""

    def __init__(self, *, rel_l1_thresh: float = 0.05, max_skips: int = 2, names: tuple = ("cond",)):
        self.rel_l1_thresh, self.max_skips, self.names = rel_l1_thresh, max_skips, names

    def should_compute(self, ctx) -> bool:
        return True


# -- strategies: every built-in pass with random valid parameters -------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-12, max_value=1e15, allow_nan=False, allow_infinity=False)
threshold = st.floats(min_value=0, max_value=10, allow_nan=False)
int_lists = st.lists(st.integers(0, 200), max_size=5)

teacache_args = {"rel_l1_thresh": threshold, "wan_variant": st.sampled_from(sorted(TEACACHE_COEFFICIENTS)),
                 "coefficients": st.lists(finite, min_size=1, max_size=6).map(tuple) | st.lists(finite, min_size=1),
                 "use_ret_steps": st.booleans()}
policies = st.one_of(
    st.just(make_policy("none")),
    st.fixed_dictionaries({}, optional=teacache_args).map(lambda kw: make_policy("teacache", **kw)),
    st.fixed_dictionaries({}, optional={"warm_steps": st.integers(0, 50), **teacache_args})
      .map(lambda kw: make_policy("warmstart_reuse", **kw)),
    st.fixed_dictionaries({}, optional={"rel_l1_thresh": threshold, "warmup_steps": st.integers(0, 100)})
      .map(lambda kw: make_policy("fbcache", **kw)),
    st.fixed_dictionaries({}, optional={"rel_l1_thresh": threshold, "max_skips": st.integers(-5, 5),
                                        "names": st.lists(st.sampled_from(["cond", "uncond"])).map(tuple)})
      .map(lambda kw: Drift(**kw)),
)
selection = st.none() | st.integers(0, 200) | int_lists
branches = st.none() | st.sampled_from(["cond", "uncond"]) | st.lists(st.sampled_from(["cond", "uncond"]), max_size=2)

passes = st.one_of(
    st.builds(Regroup, st.sampled_from(["stack", "per_block"]) | st.integers(1, 64)),
    st.builds(ApplyPolicy, policies | st.sampled_from(["none", "teacache", "warmstart_reuse", "fbcache"])),
    st.just(FoldStatic()),
    st.builds(WarmStart, window=int_lists.map(tuple), warm_steps=st.integers(0, 50)),
    st.builds(SetCells, mode=st.sampled_from(CELL_MODES), steps=selection, branches=branches, units=selection,
              consult=st.none() | st.booleans()),
    st.builds(SchedulePrefetch, lead=st.none() | st.integers(1, 100), speculative=st.none() | st.booleans(),
              residual_bytes=st.none() | st.integers(1, 2**40), bandwidth=st.none() | positive,
              latency=st.floats(min_value=0, max_value=10, allow_nan=False), unit_seconds=st.none() | positive),
    st.just(Dce()),
)


@FAST
@given(st.lists(passes, max_size=8))
def test_every_pipeline_parses_back_from_its_text(chain):
    pipeline = Pipeline(chain)
    text = str(pipeline)
    again = Pipeline.parse(text)
    assert again == pipeline and str(again) == text


@FAST
@given(policies)
def test_a_policy_is_a_value_that_prints_with_all_its_arguments(policy):
    again = pipeline_policy(f"apply_policy(policy={policy.to_text()})")
    assert again == policy and hash(again) == hash(policy) and again.to_text() == policy.to_text()
    assert type(again) is type(policy) and again.params() == policy.params()
    assert pickle.loads(pickle.dumps(policy)) == policy


# -- the form of the text -----------------------------------------------------------------------------------

def test_builtin_params_are_every_argument_resolved():
    assert make_policy("none").params() == {} and make_policy("none").to_text() == "none"
    assert FirstBlockCache(rel_l1_thresh=0.3).to_text() == "fbcache(rel_l1_thresh=0.3, warmup_steps=0)"
    tea = TeaCache(rel_l1_thresh=1, use_ret_steps=False)
    assert tea.params() == {"rel_l1_thresh": 1.0, "wan_variant": "t2v-1.3B",
                            "coefficients": TEACACHE_COEFFICIENTS["t2v-1.3B"][False], "use_ret_steps": False}
    assert type(tea.params()["rel_l1_thresh"]) is float and type(tea.params()["coefficients"]) is tuple
    assert TeaCache(coefficients=[1, 2]).params()["coefficients"] == (1.0, 2.0)
    warm = WarmstartReuse(warm_steps=3, rel_l1_thresh=0.5)
    assert list(warm.params()) == ["warm_steps", "rel_l1_thresh", "wan_variant", "coefficients", "use_ret_steps"]
    assert warm.to_text().startswith("warmstart_reuse(warm_steps=3, rel_l1_thresh=0.5, wan_variant='t2v-1.3B', ")
    assert warm.describe() == warm.to_text()


def test_policies_compare_by_value():
    assert FirstBlockCache() == FirstBlockCache(rel_l1_thresh=0.1, warmup_steps=0) == make_policy("fbcache")
    assert FirstBlockCache(rel_l1_thresh=0.3) != FirstBlockCache()
    assert TeaCache() == TeaCache(coefficients=TEACACHE_COEFFICIENTS["t2v-1.3B"][True])  # the same resolved values
    assert len({FirstBlockCache(), FirstBlockCache(), TeaCache(), make_policy("none")}) == 3
    assert ApplyPolicy("fbcache") == ApplyPolicy(FirstBlockCache())  # a name is the policy with its defaults


def test_a_user_policy_is_lossless_without_code_of_its_own():
    drift = Drift(max_skips=4)
    assert drift.params() == {"rel_l1_thresh": 0.05, "max_skips": 4, "names": ("cond",)}
    assert drift.to_text() == "text_drift(rel_l1_thresh=0.05, max_skips=4, names=('cond',))"
    assert pipeline_policy(f"apply_policy(policy={drift.to_text()})") == drift != Drift()


def test_a_user_subclass_of_a_builtin_keeps_its_own_arguments():
    @register_policy("text_fb_every")
    class EveryK(FirstBlockCache):
        def __init__(self, *, every: int = 2, **fbcache_kwargs):
            self.every = every
            super().__init__(**fbcache_kwargs)

    policy = EveryK(every=3, rel_l1_thresh=0.2)
    assert policy.to_text() == "text_fb_every(rel_l1_thresh=0.2, warmup_steps=0, every=3)"
    assert pipeline_policy(f"apply_policy(policy={policy.to_text()})") == policy


def test_a_non_literal_argument_is_refused_where_the_text_is_written():
    policy = Drift(names=lambda step: step % 2)
    with pytest.raises(ValueError, match=r"policy text_drift: names: <function .* is not a Python literal"):
        policy.to_text()
    with pytest.raises(ValueError, match="policy text_drift: names"):
        str(default_pipeline(policy=policy))
    assert repr(policy) == "<Drift text_drift>"  # a repr never fails


def test_an_unregistered_policy_prints_its_class_name_which_does_not_parse():
    class Local(CachePolicy):
        def should_compute(self, ctx):
            return True

    text = str(default_pipeline(policy=Local()))
    assert "apply_policy(policy=Local)" in text
    with pytest.raises(ValueError, match="unknown policy 'Local'; registered: .*fbcache"):
        Pipeline.parse(text)
    with pytest.raises(TypeError, match=r"Local\(\) takes no arguments"):
        Local(x=1)


# -- parsing ------------------------------------------------------------------------------------------------

def test_a_bare_policy_name_is_the_policy_with_its_defaults():
    bare = Pipeline.parse("regroup(granularity=2),apply_policy(policy=fbcache),dce")
    assert bare.passes[1].policy == FirstBlockCache()
    assert str(bare) == "regroup(granularity=2),apply_policy(policy=fbcache(rel_l1_thresh=0.1, warmup_steps=0)),dce"
    called = Pipeline.parse("apply_policy(policy=fbcache(rel_l1_thresh=0.3))")
    assert called.passes[0].policy == FirstBlockCache(rel_l1_thresh=0.3)
    assert Pipeline.parse("apply_policy(fbcache(rel_l1_thresh=0.3))") == called  # positional, as for any pass


@pytest.mark.parametrize("text, match", [
    ("apply_policy(policy=nope)", "apply_policy: policy: unknown policy 'nope'; registered: .*fbcache.*, none"),
    ("apply_policy(policy=nope(x=1))", "apply_policy: policy: unknown policy 'nope'"),
    ("apply_policy(policy=fbcache(foo=1))",
     r"apply_policy: policy: fbcache has no argument 'foo' \(arguments: rel_l1_thresh, warmup_steps\)"),
    ("apply_policy(policy=warmstart_reuse(foo=1))",
     "warmstart_reuse has no argument 'foo' .*warm_steps, rel_l1_thresh, wan_variant, coefficients, use_ret_steps"),
    ("apply_policy(policy=none(rel_l1_thresh=0.1))", "none has no argument 'rel_l1_thresh' .it takes none"),
    ("apply_policy(policy=fbcache(0.3))", "apply_policy: policy: fbcache: arguments are given by keyword"),
    ("apply_policy(policy=fbcache(rel_l1_thresh=high))", r"fbcache\(rel_l1_thresh=...\): expected a Python literal"),
    ("apply_policy(policy=teacache(coefficients=f(1)))", r"teacache\(coefficients=...\): expected a Python literal"),
    ("apply_policy(policy=fbcache(rel_l1_thresh=-1))", "apply_policy: policy: fbcache: rel_l1_thresh: expected a"),
    ("apply_policy(policy=teacache(wan_variant='t2v-7B'))", "teacache: wan_variant: unknown 't2v-7B'"),
    ("apply_policy(policy=3)", "apply_policy: policy: expected a policy name or name"),
    ("apply_policy(policy=fbcache.x)", "apply_policy: policy: expected a policy name or name"),
    ("apply_policy(polcy=fbcache)", r"apply_policy has no parameter 'polcy' \(parameters: policy\)"),
    ("apply_policy(fbcache, policy=none)", "apply_policy: parameter 'policy' is given twice"),
    ("regroup(granularity=f(2))", r"regroup\(granularity=...\): expected a literal value"),
    ("fold_static(decisions=1)", "fold_static has no parameter 'decisions'"),
])
def test_bad_policy_text_names_the_pass_the_parameter_and_the_choices(text, match):
    with pytest.raises(ValueError, match=match):
        Pipeline.parse(text)


def test_a_policy_binding_still_replaces_the_text():
    """enable_cache(policy, pipeline=text) binds its policy: the one that decides is the one printed."""
    policy = FirstBlockCache(rel_l1_thresh=0.5)
    for text in ("apply_policy(policy=none)", "apply_policy(policy=fbcache(rel_l1_thresh=0.1))",
                 "apply_policy(policy=custom)"):  # an unregistered policy's text, as before
        assert Pipeline.parse(text, policy=policy).passes[0].policy is policy


# -- the policy of a pipeline or a plan ---------------------------------------------------------------------

def test_pipeline_policy_and_plan_policy():
    assert pipeline_policy(default_pipeline(policy="teacache")) == TeaCache()
    assert pipeline_policy(default_pipeline(granularity=2)) is None and pipeline_policy("") is None
    text = "regroup(granularity=2),apply_policy(policy=fbcache(rel_l1_thresh=0.3)),fora,dce"  # fora: unregistered
    assert pipeline_policy(text) == FirstBlockCache(rel_l1_thresh=0.3)
    plan = Plan.from_graph(lower(RunSpec(num_steps=2, timesteps=(2.0, 1.0), num_blocks=4)), pipeline=text)
    assert plan_policy(plan) == FirstBlockCache(rel_l1_thresh=0.3)
    with pytest.raises(ValueError, match="apply_policy: policy: unknown policy 'nope'"):
        pipeline_policy("apply_policy(policy=nope)")
    with pytest.raises(TypeError, match="pipeline: expected an edit.passes.Pipeline or its text"):
        pipeline_policy(3)
    with pytest.raises(TypeError, match="plan: expected an edit.graph.Plan"):
        plan_policy(object())
