"""How many spare session processes the parent keeps (chatd/sparepool.py: PoolSize),
fed arrivals and the time: a fixed number, or with the default (-1) as many as the recent
arrival rate wants, between AUTO_MIN and server.spare_max."""

from __future__ import annotations

from chatd.config import Config
from chatd.sparepool import AUTO_MIN, LEAD, WINDOW, PoolSize, cap


def config(spare: int, spare_max: int = 128) -> Config:
    base = Config()
    return base.with_values({**base.values, "spare_children": spare, "spare_max": spare_max})


def test_the_default_is_the_adaptive_pool() -> None:
    assert Config().spare_children == -1


def test_a_fixed_pool_keeps_its_size_whatever_comes() -> None:
    pool = PoolSize(config(3))
    for i in range(500):
        pool.arrived(100.0 + i / 1000)
    assert pool.target(100.5) == 3
    assert cap(config(3)) == 3


def test_an_idle_adaptive_pool_is_small() -> None:
    pool = PoolSize(config(-1))
    assert pool.target(0.0) == AUTO_MIN
    pool.arrived(5.0)
    assert pool.target(5.5) == AUTO_MIN


def test_a_burst_grows_the_pool_at_once_and_it_shrinks_when_the_burst_is_old() -> None:
    pool = PoolSize(config(-1))
    for i in range(200):  # 200 arrivals within one second
        pool.arrived(50.0 + i / 400)
    assert pool.target(50.6) == int(200 * LEAD)
    assert pool.target(50.0 + WINDOW - 1) == int(200 * LEAD)  # still within the window
    assert pool.target(51.0 + WINDOW) == AUTO_MIN


def test_the_adaptive_pool_is_capped_by_spare_max() -> None:
    pool = PoolSize(config(-1, spare_max=16))
    for i in range(1000):
        pool.arrived(7.0 + i / 2000)
    assert pool.target(7.6) == 16
    assert cap(config(-1, spare_max=16)) == 16
    assert PoolSize(config(-1, spare_max=0)).target(0.0) == 0  # no pool at all
