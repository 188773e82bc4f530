"""Model-based tests: TieredStore (GPU -> CPU -> disk, tiny budgets) against a plain dict.

After every operation: every tier is within budget; the bytes each tier reports equal the bytes its
store actually holds; every entry reads back bit-exactly as the last value put under its key; an
entry only goes missing after a counted eviction or rejection, and evictions only happen once the
live data outgrew the last tier; the most recently used entry (a put that fits a tier, or a hit) is
always present. Driven twice: by a Hypothesis state machine and by a seeded random fuzzer.
"""

from __future__ import annotations

import random
import shutil
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from edit.runtime.store import CPUStore, DiskStore, GPUStore, TieredStore
from test_store_util import DTYPES, LAYOUTS, bits_equal, held_bytes, make_tensor

# Budgets grow downward (as in the seed: 384 / 768 / 2304 MB), so anything that fits a tier fits
# every tier below it, and only the last tier ever has to evict.
BUDGETS = (256, 512, 1536)
# Up to 256 int64 elements = 2048 bytes: past any tier's budget, so rejections happen too.
MAX_NUMEL = 256
ALL_KEYS = [(gen, step, branch, 0) for gen in range(2) for step in range(3) for branch in ("cond", "uncond")]


class Harness:
    """A TieredStore, the dict it must agree with, and the checks run after each operation."""

    def __init__(self, promote: bool, device: str = "cpu") -> None:
        self.directory = tempfile.mkdtemp(prefix="edit-model-")
        self.device = torch.device(device)
        self.store = TieredStore([(GPUStore(device=device), BUDGETS[0]), (CPUStore(device=device), BUDGETS[1]),
                                  (DiskStore(self.directory, device=device), BUDGETS[2])], promote=promote)
        self.model: dict[tuple, torch.Tensor] = {}
        self.loss_mark: dict[tuple, int] = {}  # the loss count after each live key's put
        self.latest: tuple | None = None

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def losses(self) -> int:
        stats = self.store.stats
        return stats.evictions + stats.rejected + sum(t.lost for t in stats.tiers)

    def put(self, key: tuple, value: torch.Tensor) -> None:
        before, evictions = self.losses(), self.store.stats.evictions
        self.model[key] = value
        live = sum(t.nbytes for t in self.model.values())
        stored = self.store.put(key, value.to(self.device))
        assert stored == (value.nbytes <= max(BUDGETS))
        # A rejected put is a counted loss of its own; a stored value may only vanish after a later one.
        self.loss_mark[key] = self.losses() if stored else before
        self.latest = key if stored else (None if self.latest == key else self.latest)
        self._check_evictions_need_pressure(evictions, live)

    def get(self, key: tuple) -> None:
        evictions, live = self.store.stats.evictions, sum(t.nbytes for t in self.model.values())
        got = self.store.get(key)
        if got is None:
            assert key not in self.store
            self._forget_lost(key)
        else:
            assert got.device == self.device and bits_equal(got, self.model[key]), key
            self.latest = key  # a hit is the most recent use
        self._check_evictions_need_pressure(evictions, live)

    def drop(self, key: tuple) -> None:
        self.store.drop(key)
        assert key not in self.store
        self.model.pop(key, None)
        self.loss_mark.pop(key, None)
        if self.latest == key:
            self.latest = None

    def prefetch(self, key: tuple) -> None:
        self.store.prefetch(key)

    def check(self) -> None:
        held_keys: set = set()
        for tier, (budget, store) in enumerate(zip(BUDGETS, self.store.stores)):
            assert self.store.tier_bytes[tier] == store.nbytes == held_bytes(store) <= budget
            assert held_keys.isdisjoint(store.keys())
            held_keys.update(store.keys())
        assert held_keys == set(self.store.keys()) and self.store.nbytes == sum(self.store.tier_bytes)
        assert held_keys <= set(self.model)
        for key in list(self.model):
            held = self.store.peek(key)
            if held is None:
                self._forget_lost(key)
            else:
                assert bits_equal(held, self.model[key]), key
        if self.latest is not None:
            assert self.latest in self.store, "the most recently used entry was lost"

    def _forget_lost(self, key: tuple) -> None:
        if key in self.model:
            assert self.losses() > self.loss_mark[key], f"{key} vanished without a counted eviction"
            del self.model[key]
            del self.loss_mark[key]

    def _check_evictions_need_pressure(self, evictions_before: int, live_bytes: int) -> None:
        # The last tier holds a subset of the live entries: it can only overflow (and evict) once the
        # live data outgrew its budget; with budgets growing downward no other tier ever evicts.
        if self.store.stats.evictions > evictions_before:
            assert live_bytes > BUDGETS[-1], f"evicted with only {live_bytes} live bytes"


class TieredModel(RuleBasedStateMachine):
    """Hypothesis drives the operations; the harness checks them."""

    @initialize(promote=st.booleans())
    def open_store(self, promote):
        self.harness = Harness(promote)

    def teardown(self):
        if hasattr(self, "harness"):
            self.harness.close()

    def _key(self, data):
        live = sorted(self.harness.model)
        return data.draw(st.sampled_from(live) if live and data.draw(st.integers(0, 3)) else st.sampled_from(ALL_KEYS))

    @rule(key=st.sampled_from(ALL_KEYS), dtype=st.sampled_from(DTYPES), numel=st.integers(0, MAX_NUMEL),
          layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 10**6))
    def put(self, key, dtype, numel, layout, seed):
        self.harness.put(key, make_tensor(dtype, numel, layout, seed))

    @rule(key=st.sampled_from(ALL_KEYS), numel=st.integers(0, 64), seed=st.integers(0, 10**6))
    def put_small(self, key, numel, seed):
        self.harness.put(key, make_tensor(torch.float32, numel, "contiguous", seed))

    @precondition(lambda self: hasattr(self, "harness"))
    @rule(data=st.data())
    def get(self, data):
        self.harness.get(self._key(data))

    @precondition(lambda self: hasattr(self, "harness"))
    @rule(data=st.data())
    def drop(self, data):
        self.harness.drop(self._key(data))

    @precondition(lambda self: hasattr(self, "harness"))
    @rule(data=st.data())
    def prefetch(self, data):
        self.harness.prefetch(self._key(data))

    @invariant()
    def agrees_with_the_dict(self):
        if hasattr(self, "harness"):
            self.harness.check()


TieredModel.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None,
                                         derandomize=True, database=None,
                                         suppress_health_check=[HealthCheck.too_slow])
test_tiered_store_matches_a_dict = TieredModel.TestCase


def churn(seed: int, ops: int, device: str = "cpu") -> None:
    """Random operations (seeded) on a Harness, checked after each one."""
    rng = random.Random(seed)
    harness = Harness(promote=seed != 1, device=device)
    try:
        for _ in range(ops):
            live = sorted(harness.model)
            key = rng.choice(live) if live and rng.random() < 0.7 else rng.choice(ALL_KEYS)
            op = rng.choices(["put", "get", "drop", "prefetch"], weights=[5, 6, 1, 2])[0]
            if op == "put":
                numel = rng.choice([rng.randint(0, 16), rng.randint(0, 96), rng.randint(0, MAX_NUMEL)])
                value = make_tensor(rng.choice(DTYPES), numel, rng.choice(LAYOUTS), rng.randrange(10**6))
                harness.put(key, value)
            else:
                getattr(harness, op)(key)
            harness.check()
        stats = harness.store.stats
        # The run must actually have exercised every path it claims to test.
        assert stats.spills and stats.evictions and stats.rejected and stats.tiers[2].hits
        assert stats.promotions if seed != 1 else stats.promotions == 0
    finally:
        harness.close()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiered_store_matches_a_dict_under_random_churn(seed):
    churn(seed, ops=3000)
