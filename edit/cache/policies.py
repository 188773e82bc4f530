"""The built-in policies (`teacache`, `fbcache`, `none`); they live in `edit.passes.policies`."""

from edit.passes.policies import TEACACHE_COEFFICIENTS, FirstBlockCache, NoCache, TeaCache

__all__ = ["TEACACHE_COEFFICIENTS", "FirstBlockCache", "NoCache", "TeaCache"]
