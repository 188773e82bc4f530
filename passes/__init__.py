"""Rewrite passes `Graph -> Graph`, the pipeline that runs them, the editing API and the policy API.

A pass is pure: it returns a new graph, or the same object when nothing changed. Importing this
package loads neither torch nor diffusers.
"""

from edit.passes.apply_policy import apply_policy, pipeline_policy, plan_policy
from edit.passes.base import PASSES, Pass, PassRecord, Pipeline, bound, pass_text, register_pass
from edit.passes.builtin import (ApplyPolicy, Dce, FoldStatic, Regroup, SchedulePrefetch, SetCells, WarmStart,
                                 default_pipeline)
from edit.passes.dce import dce
from edit.passes.edit import (cells_from_units, insert_prefetch, remove_prefetch, replace_all_uses_with,
                              reroute_reuse, select_cells, set_cells, set_window)
from edit.passes.fold import fold_static, skip_schedule
from edit.passes.policy import (REGISTRY, CacheContext, CachePolicy, PolicyState, check_threshold, make_policy,
                                policy_class, register_policy, relative_l1)
from edit.passes.place import Place, place
from edit.passes.search import (Schedule, Searched, SearchedUnits, brute_force, combine_costs, solve,
                                 solve_every_budget, solve_units)
from edit.passes.prefetch import cost_lead, prefetch_lead, schedule_prefetch
from edit.passes.warm_start import check_warm_steps, warm_start
from edit.passes.regroup import regroup

__all__ = ["ApplyPolicy", "CacheContext", "CachePolicy", "Dce", "FoldStatic", "PASSES", "Pass", "PassRecord", "Place", "Schedule", "Searched", "SearchedUnits",
           "Pipeline", "PolicyState", "REGISTRY", "Regroup", "SchedulePrefetch", "SetCells", "WarmStart",
           "apply_policy", "bound", "brute_force", "combine_costs", "solve", "solve_every_budget", "solve_units", "cells_from_units", "check_threshold", "check_warm_steps", "cost_lead", "dce",
           "default_pipeline", "fold_static", "insert_prefetch", "make_policy", "pass_text", "pipeline_policy", "place",
           "plan_policy", "policy_class", "prefetch_lead", "register_pass", "register_policy", "regroup",
           "relative_l1", "remove_prefetch", "replace_all_uses_with", "reroute_reuse", "schedule_prefetch",
           "select_cells", "set_cells", "set_window", "skip_schedule", "warm_start"]
