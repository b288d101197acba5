"""The client's clock: day labels and stamps independent of the run date, zone and locale."""

from __future__ import annotations

import locale
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from chat_client.buffer import Buffer, Line
from chat_client.clock import Clock
from chat_client.render import rows_for

BERLIN = ZoneInfo("Europe/Berlin")


def test_day_label_is_the_clients_own_not_the_locales() -> None:
    clock = Clock(zone=UTC)
    saved = locale.setlocale(locale.LC_TIME)
    try:
        for name in ("de_DE.UTF-8", "fr_FR.UTF-8", "C"):
            try:
                locale.setlocale(locale.LC_TIME, name)
            except locale.Error:
                continue
            assert clock.day(datetime(2026, 11, 21, tzinfo=UTC).timestamp()) == "Sat 21 Nov 2026"
    finally:
        locale.setlocale(locale.LC_TIME, saved)


def test_stamps_follow_the_zone_across_a_dst_change() -> None:
    clock = Clock(zone=BERLIN)
    # 2026-10-25 01:00 UTC is 03:00 CEST, the moment Berlin falls back to 02:00 CET.
    before = datetime(2026, 10, 25, 0, 30, tzinfo=UTC).timestamp()
    after = datetime(2026, 10, 25, 1, 30, tzinfo=UTC).timestamp()
    assert clock.hm(before) == "02:30" and clock.hm(after) == "02:30"
    assert clock.day(before) == clock.day(after) == "Sun 25 Oct 2026"


def test_day_line_is_drawn_by_the_zone_not_by_utc() -> None:
    # 22:30 and 23:30 UTC are one day in UTC and two in Berlin (23:30 and 00:30 there).
    late = datetime(2026, 11, 20, 22, 30, tzinfo=UTC).timestamp()
    early = datetime(2026, 11, 20, 23, 30, tzinfo=UTC).timestamp()
    for zone, expect_line in ((BERLIN, True), (UTC, False)):
        clock = Clock(now=lambda: early, zone=zone)
        buf = Buffer("#a", "#a", "room")
        buf.add(Line("message", late, "late", nick="bob", id=1))
        buf.add(Line("message", early, "early", nick="bob", id=2))
        rows = ["".join(t for _, t in r) for r in rows_for(buf, 1, 60, "me", clock)]
        assert rows[0].startswith("──") is expect_line, (zone, rows)


def test_the_top_line_is_compared_with_the_injected_today() -> None:
    ts = datetime(2026, 11, 21, 12, tzinfo=UTC).timestamp()
    buf = Buffer("#a", "#a", "room")
    buf.add(Line("message", ts, "hi", nick="bob", id=1))
    same_day = Clock(now=lambda: ts + 3600, zone=UTC)
    next_day = Clock(now=lambda: ts + 86400, zone=UTC)
    assert len(rows_for(buf, 0, 60, "me", same_day)) == 1
    assert "Sat 21 Nov 2026" in rows_for(buf, 0, 60, "me", next_day)[0][0][1]


def test_absurd_timestamps_are_clamped_not_fatal() -> None:
    clock = Clock(zone=UTC)
    assert clock.day(1e20) == "Wed 29 Dec 9999"
    assert clock.day(-1e20) == "Thu 01 Jan 1970"
    assert clock.hm(float("nan")) == "00:00"
    assert clock.hm(float("inf")) == "00:00"
