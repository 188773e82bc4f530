"""The user-facing cache API: policies, their registry, stores, hooks and transformer patching.

>>> from edit.cache import CachePolicy, register_policy, relative_l1
>>> @register_policy("every_other_step")
... class EveryOther(CachePolicy):
...     def should_compute(self, ctx):
...         return ctx.step % 2 == 0
>>> import torch
>>> relative_l1(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 2.0]))
0.3333333432674408
"""

from edit.passes.policies import TEACACHE_COEFFICIENTS, FirstBlockCache, MagCache, NoCache, TeaCache
from edit.passes.policy import (REGISTRY, CacheContext, CachePolicy, PolicyState, make_policy, register_policy,
                                relative_l1)
from edit.cache.transformer import apply_cache_on_transformer, remove_cache_from_transformer
from edit.cache.calibrate import MagCacheCalibration, TeaCacheCalibration, calibrate_magcache, calibrate_teacache
from edit.runtime.cache import HOOK_EVENTS, CacheController, CacheStats, UnitEvent
from edit.runtime.store import (CacheStore, CPUStore, DiskStore, GPUStore, StoreStats, TieredStats, TieredStore,
                                TierStats)

__all__ = ["HOOK_EVENTS", "REGISTRY", "TEACACHE_COEFFICIENTS", "CPUStore", "CacheContext", "CacheController",
           "CachePolicy", "CacheStats", "CacheStore", "DiskStore", "FirstBlockCache", "GPUStore", "MagCache",
           "MagCacheCalibration", "StoreStats",
           "TierStats", "TieredStats", "TieredStore", "NoCache", "PolicyState", "TeaCache", "TeaCacheCalibration",
           "UnitEvent", "calibrate_magcache", "calibrate_teacache", "make_policy",
           "apply_cache_on_transformer", "register_policy", "relative_l1", "remove_cache_from_transformer"]
