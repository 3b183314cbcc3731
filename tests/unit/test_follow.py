"""The alias follower (scoring.engine.follow) with a fake resolver, a fake opener and a fake clock."""

from __future__ import annotations

import dataclasses

import pytest

from scoring.engine.follow import AliasFollower, Move


@dataclasses.dataclass(frozen=True)
class Resolved:
    version: str


class Registry:
    """An alias that points where the test says; counts lookups."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.lookups = 0
        self.fail: Exception | None = None

    def resolve(self) -> Resolved:
        self.lookups += 1
        if self.fail is not None:
            raise self.fail
        return Resolved(self.version)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world():
    registry, clock, opened, moves = Registry("1"), Clock(), [], []

    def open_(resolved: Resolved) -> str:
        opened.append(resolved.version)
        return f"predictor-{resolved.version}-{len(opened)}"

    follower = AliasFollower(registry.resolve, open_, interval_s=30.0, on_move=moves.append, clock=clock)
    return follower, registry, clock, opened, moves


def test_start_resolves_and_opens_the_first_version(world):
    follower, registry, _, opened, moves = world
    assert follower.start() == "predictor-1-1"
    assert follower.version == "1" and follower.current == "predictor-1-1" and follower.resolved == Resolved("1")
    assert opened == ["1"] and registry.lookups == 1 and moves == []


def test_start_takes_an_already_resolved_version_without_a_lookup(world):
    follower, registry, _, opened, _ = world
    follower.start(Resolved("7"))
    assert follower.version == "7" and registry.lookups == 0 and opened == ["7"]


def test_a_check_resolves_at_most_once_per_interval(world):
    follower, registry, clock, _, _ = world
    follower.start()
    for _ in range(5):
        clock.now += 5
        assert follower.check() is None
    assert registry.lookups == 1  # 25 s since the start: no lookup yet
    clock.now += 5
    assert follower.check() is None
    assert registry.lookups == 2
    assert follower.check() is None
    assert registry.lookups == 2


def test_a_forced_check_ignores_the_interval(world):
    follower, registry, _, _, _ = world
    follower.start()
    registry.version = "2"
    move = follower.check(force=True)
    assert move is not None and move.new_version == "2"
    assert registry.lookups == 2


def test_a_move_is_returned_and_reported_with_both_versions_opened_objects(world):
    follower, registry, clock, opened, moves = world
    follower.start()
    registry.version = "2"
    clock.now += 30
    move = follower.check()
    assert move == Move("1", "2", "predictor-1-1", "predictor-2-2", Resolved("2"), reused=False)
    assert moves == [move]
    assert follower.version == "2" and follower.current == "predictor-2-2"
    assert opened == ["1", "2"]


def test_an_alias_moving_back_reuses_what_each_version_opened(world):
    follower, registry, _, opened, moves = world
    follower.start()
    for version in ["2", "1", "2", "1"]:
        registry.version = version
        assert follower.check(force=True) is not None
    assert opened == ["1", "2"]  # one object per version, however often the alias flips
    assert [m.reused for m in moves] == [False, True, True, True]
    assert follower.current == "predictor-1-1"
    assert follower.opened() == {"1": "predictor-1-1", "2": "predictor-2-2"}
    assert follower.versions == ["1", "2", "1", "2", "1"]


def test_no_move_when_the_alias_still_points_to_the_same_version(world):
    follower, _, _, opened, moves = world
    follower.start()
    assert follower.check(force=True) is None
    assert opened == ["1"] and moves == [] and follower.versions == ["1"]


def test_a_failed_lookup_keeps_the_current_version_and_retries_after_the_interval(world):
    follower, registry, clock, _, _ = world
    follower.start()
    registry.fail = RuntimeError("registry down")
    clock.now += 30
    with pytest.raises(RuntimeError):
        follower.check()
    assert follower.version == "1"
    registry.fail = None
    registry.version = "2"
    assert follower.check() is None  # the failed lookup counted: wait for the interval
    clock.now += 30
    assert follower.check() is not None


def test_a_version_that_fails_to_open_is_not_adopted(world):
    follower, registry, _, _, moves = world
    calls = []

    def open_(resolved: Resolved) -> str:
        calls.append(resolved.version)
        if resolved.version == "2":
            raise RuntimeError("cannot open version 2")
        return resolved.version

    follower = AliasFollower(registry.resolve, open_, interval_s=0.0)
    follower.start()
    registry.version = "2"
    with pytest.raises(RuntimeError):
        follower.check()
    assert follower.version == "1" and follower.current == "1" and follower.opened() == {"1": "1"}
    with pytest.raises(RuntimeError):  # tried again next time
        follower.check()
    assert calls == ["1", "2", "2"]
