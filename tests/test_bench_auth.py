"""A tiny run of `chatd bench auth`: the report's shape, never its timing."""

from __future__ import annotations

from chatd.bench import auth

FAST = 4096  # PBKDF2 iterations: the least the helper accepts


def test_bench_auth_smoke() -> None:
    """`chatd bench auth` runs and reports (structure only: never timing)."""
    report = auth.run(iterations=FAST, logins=2, accounts=1)
    assert set(report["median_ms"]) == {"register", "plain", "wrong", "unknown",
                                        "scram_server", "scram_client"}
    assert [t["name"] for t in report["targets"]] == ["plain_ms", "unknown_vs_wrong",
                                                      "pss_kib"]
    assert "PLAIN, unknown account" in auth.render(report)
