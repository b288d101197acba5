"""The per-source connection rate table (sans-I/O, with an injected clock)."""

from __future__ import annotations

import pytest

from chatd.admission import SourceRates, source_of


@pytest.mark.parametrize(("ip", "source"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("::1", "::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),  # IPv4 through a dual-stack listener
    ("fe80::1%eth0", "fe80::/64"),
    ("not an address", "not an address"),
])
def test_a_source_is_an_ipv4_address_or_an_ipv6_slash_64(ip: str, source: str) -> None:
    assert source_of(ip) == source


def test_a_source_gets_its_burst_then_its_rate() -> None:
    rates = SourceRates(rate=2.0, burst=3, size=100)
    assert [rates.take("a", 10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rates.take("b", 10.0) == 0.0  # another source has its own bucket
    assert rates.take("a", 10.5) == 0.0  # 2/s: a token every 0.5 s
    assert rates.take("a", 11.0) == 0.0
    assert rates.refused("a") == 0


def test_a_refusal_costs_a_token_so_waiting_retry_after_gets_in() -> None:
    rates = SourceRates(rate=2.0, burst=3, size=100)
    for _ in range(3):
        rates.take("a", 0.0)
    wait = rates.take("a", 0.0)  # refused, and now one token in debt
    assert wait == pytest.approx(1.0) and rates.refused("a") == 1
    wait = rates.take("a", 0.5)  # too early: refused, and back in debt (-1 + 1 - 1)
    assert wait == pytest.approx(1.0) and rates.refused("a") == 2
    assert rates.take("a", 0.5 + wait) == 0.0  # waited as told: in


def test_hammering_is_refused_until_it_slows_down() -> None:
    rates = SourceRates(rate=10.0, burst=5, size=100)
    now, admitted = 0.0, 0
    for _ in range(10_000):  # 1,000 attempts a second for 10 s
        now += 0.001
        admitted += rates.take("attacker", now) == 0.0
    assert admitted == 5  # the burst, then nothing: every refusal kept it in debt
    assert rates.take("attacker", now) == pytest.approx((5 + 1) / 10.0, abs=0.01)
    # The debt is bounded: after (burst + 1) / rate seconds of quiet it may connect again,
    # and from then on connecting at the rate is fine.
    now += 0.6 + 0.001
    for _ in range(50):
        assert rates.take("attacker", now) == 0.0
        now += 0.1


def test_refilled_sources_are_forgotten_with_their_refusals() -> None:
    rates = SourceRates(rate=1.0, burst=2, size=100)
    for _ in range(4):
        rates.take("a", 0.0)  # 2 admitted, 2 refused: 2 tokens in debt
    rates.take("b", 0.0)
    assert list(rates.table) == ["a", "b"]
    rates.take("c", 3.5)  # a: -2 + 3.5 tokens, not yet full
    assert "a" in rates.table and rates.forgotten == []
    rates.take("c", 4.0)  # a is full again: as good as new; b too, never refused
    assert list(rates.table) == ["c"] and rates.forgotten == [("a", 2)]


def test_the_table_is_bounded_and_evicts_the_least_recently_seen() -> None:
    rates = SourceRates(rate=0.01, burst=1, size=16)
    for n in range(1000):  # many sources, none of which refills in time
        assert rates.take(f"10.0.{n // 256}.{n % 256}", 0.0) == 0.0
        rates.take("10.9.9.9", 0.0)  # one keeps coming back and stays in
    assert len(rates.table) == 16
    assert rates.evicted == 1000 + 1 - 16
    assert "10.9.9.9" in rates.table and rates.refused("10.9.9.9") == 1000 - 1
    assert rates.take("10.9.9.9", 0.0) == pytest.approx(200.0)  # its debt was not forgotten


def test_reconfigure_applies_to_known_sources_and_shrinks_the_table() -> None:
    rates = SourceRates(rate=1.0, burst=10, size=100)
    for n in range(30):
        rates.take(f"s{n}", 0.0)
    rates.take("s29", 0.0)
    for _ in range(30):
        rates.take("s0", 0.0)  # 10 admitted, 20 refused: 10 tokens in debt
    rates.reconfigure(rate=1.0, burst=2, size=16)
    assert len(rates.table) == 16 and set(rates.table) >= {"s29", "s0"}
    assert rates.take("s29", 0.0) == 0.0  # min(8 left, new burst 2) = 2 tokens
    assert rates.take("s29", 0.0) == 0.0
    assert rates.take("s29", 0.0) == pytest.approx(2.0)  # refused: 1 in debt, 2 s to go
    assert rates.take("s0", 0.0) == pytest.approx(3.0)  # the debt is capped at the new burst
