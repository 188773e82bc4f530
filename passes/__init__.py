"""Rewrite passes `Graph -> Graph` and the cache-policy API they bind.

Every pass is pure: it returns a new graph, or the same object when nothing changed.
"""

from edit.passes.apply_policy import apply_policy
from edit.passes.fold import fold_static, skip_schedule, static_decisions
from edit.passes.manager import PassManager, PassRecord, pass_name
from edit.passes.policy import (REGISTRY, CacheContext, CachePolicy, PolicyState, check_threshold, make_policy,
                                register_policy, relative_l1)
from edit.passes.prefetch import prefetch_lead, schedule_prefetch
from edit.passes.regroup import regroup

__all__ = ["REGISTRY", "CacheContext", "CachePolicy", "PassManager", "PassRecord", "PolicyState", "apply_policy",
           "check_threshold", "fold_static", "make_policy", "pass_name", "prefetch_lead", "register_policy", "regroup",
           "relative_l1", "schedule_prefetch", "skip_schedule", "static_decisions"]
