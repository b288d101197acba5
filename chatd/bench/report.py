"""The report every scenario prints: a header, its phases, memory, targets, the result.

A scenario family renders its own phase lines (`render(report) -> list[str]`); the lines
around them are the same for all. `--json` prints the same report as JSON instead.
"""

from __future__ import annotations

from typing import Any

COL = 14  # width of the first column


def kib(v: int | None) -> str:
    return "-" if v is None else f"{v / 1024:.2f} MiB"


def target(name: str, value: float | None, goal: float, unit: str, low: bool,
           why: str) -> dict[str, Any]:
    """One target: met, or missed by how much (a factor) and why."""
    met = value is not None and (value <= goal if low else value >= goal)
    shown = f"{int(goal):,}" if float(goal).is_integer() else f"{goal:g}"
    out: dict[str, Any] = {"target": f"{'<=' if low else '>='} {shown} {unit}",
                           "name": name, "value": value, "met": met}
    if not met and value:
        out["missed_by"] = round(value / goal if low else goal / value, 2)
        out["why"] = why
    return out


def verdicts(targets: list[dict[str, Any]]) -> list[str]:
    """The targets of a command with options of its own (floor, roomsize), a line each."""
    return [f"target: {t['name']} {t['target']}: {t['value']} - "
            + ("met" if t["met"] else f"missed: {t.get('why', '')}") for t in targets]


def cpu_line(ph: dict[str, Any]) -> str:
    cpu = ph.get("server_cpu_s")
    return "server CPU -" if cpu is None else (
        f"server CPU {cpu:.3f} s (parent {ph['server_cpu_parent_s']:.3f}, "
        f"sessions {ph['server_cpu_sessions_s']:.3f})")


def latency_line(lat: dict[str, Any]) -> str:
    """A phase's delivery latency percentiles (load.percentiles)."""
    return (f"{'':<{COL}} latency p50 {lat['p50']} ms, p90 {lat['p90']} ms, "
            f"p99 {lat['p99']} ms, max {lat['max']} ms")


def arrival_line(arr: dict[str, Any]) -> str:
    """The same deliveries' arrival at the clients' sockets (the kernel's receive times):
    the server's share of the latency, without the load generator's delay in reading."""
    return (f"{'':<{COL}} at the socket p50 {arr['p50']} ms, p90 {arr['p90']} ms, "
            f"p99 {arr['p99']} ms, max {arr['max']} ms (kernel receive time)")


def chat_line(ph: dict[str, Any]) -> str:
    """A bystander's chat in one phase (load.chat_phase)."""
    c = ph["chat_ms"]
    return (f"bystander chat round trip p50 {c['p50']} ms, p99 {c['p99']} ms, max "
            f"{c['max']} ms ({ph['received']}/{ph['messages']} back, lost {ph['lost']}, "
            f"duplicates {ph['duplicates']})"
            + (f", errors {ph['errors']}" if ph["errors"] else ""))


def render(report: dict[str, Any], phase_lines: list[str]) -> str:
    lines = [f"chatd bench: {report['scenario']} - {report['description']}"]
    srv = report["server"]
    who = f"spawned pid {srv['pid']}" if srv["spawned"] else \
        f"target {srv['address']} (pid {srv['pid'] or 'unknown'})"
    spare = srv.get("spare_children", "?")
    lines.append(f"server: {who}; spare_children={'auto' if spare == -1 else spare}; "
                 f"{report['machine']['cpus']} CPUs, Python {report['machine']['python']}")
    lines.append(f"{'cpu from':<{COL}} {report['cpu_source']}")
    lines += phase_lines
    mem = report["memory"]
    if mem:
        p, t = mem["parent"], mem["sessions_total"]
        lines.append(f"{'memory':<{COL}} parent RSS {kib(p['rss'])}, PSS {kib(p['pss'])}, "
                     f"USS {kib(p['uss'])}")
        lines.append(f"{'':<{COL}} {mem['sessions']} sessions: RSS {kib(t['rss'])}, PSS "
                     f"{kib(t['pss'])}, USS {kib(t['uss'])}")
        if mem.get("spares"):
            s = mem["spares_total"]
            lines.append(f"{'':<{COL}} {mem['spares']} spares (not counted above): PSS "
                         f"{kib(s['pss'])}, USS {kib(s['uss'])}")
        if mem["per_session"]:
            ps, tp = mem["per_session"], mem["total_per_session"]
            lines.append(f"{'':<{COL}} per session: RSS {kib(ps['rss'])}, PSS "
                         f"{kib(ps['pss'])}, USS {kib(ps['uss'])}; (parent + sessions) PSS "
                         f"/ sessions = {kib(tp['pss'])}")
    if report["parent_fds"] is not None:
        lines.append(f"{'parent fds':<{COL}} {report['parent_fds']}")
    resp = report.get("responsiveness")
    if resp:
        lines.append(f"{'responsive':<{COL}} new session {resp.get('new_session_ms')} ms, "
                     f"broker round trip {resp.get('broker_round_trip_ms')} ms")
    for t in report.get("targets", []):
        verdict = "met" if t["met"] else (f"missed by {t['missed_by']}x: {t['why']}"
                                          if "missed_by" in t else "missed")
        lines.append(f"{'target':<{COL}} {t['name']} {t['target']}: {t['value']} - {verdict}")
    lines.append(f"{'result':<{COL}} {'OK' if report['ok'] else 'FAILED'}")
    return "\n".join(lines)
