"""The parent's life as one explicit state, advanced in one place (sans-I/O: fed the time).

Modelled on PostgreSQL's postmaster (PMState, UpdatePMState(), PostmasterStateMachine()):
the loop asks `advance()` once per turn what state it is in now, instead of deriving it
from a combination of flags and timestamps scattered over the handlers.

    RUNNING ──SIGTERM/SIGINT──▶ STOPPING ──stop deadline──▶ KILLING
        (every process told to end)  │                         │
                                     └──── nothing left ───────┴──▶ STOPPED (run() returns)
"""

from __future__ import annotations

import enum
import logging

log = logging.getLogger("chatd.master")


class ParentState(enum.Enum):
    RUNNING = "running"  # listening, forking, routing
    STOPPING = "stopping"  # listeners closed, every process told to end; waiting for exits
    KILLING = "killing"  # the stop deadline passed: what is left is killed; waiting to reap
    STOPPED = "stopped"  # no process left: the loop ends


class Lifecycle:
    """The parent's state and its one named deadline: when STOPPING turns into KILLING."""

    def __init__(self) -> None:
        self.state = ParentState.RUNNING
        self.stop_deadline: float | None = None

    @property
    def running(self) -> bool:
        return self.state is ParentState.RUNNING

    @property
    def stopped(self) -> bool:
        return self.state is ParentState.STOPPED

    def update(self, state: ParentState, why: str) -> None:
        """The one place the state changes (UpdatePMState): each transition logged once."""
        if state is self.state:
            return
        log.info("parent state %s -> %s: %s", self.state.value, state.value, why)
        self.state = state

    def stop(self, now: float, grace: float) -> bool:
        """Begin shutting down, allowing `grace` seconds; False if already under way."""
        if not self.running:
            return False
        self.stop_deadline = now + grace
        self.update(ParentState.STOPPING, f"told to stop; killing what is left in {grace:g}s")
        return True

    def advance(self, now: float, processes: int) -> ParentState:
        """Move on as far as the time and the `processes` not yet reaped allow
        (PostmasterStateMachine); called once per turn of the loop."""
        if self.state is ParentState.STOPPING and self.stop_deadline is not None \
                and now >= self.stop_deadline and processes:
            self.update(ParentState.KILLING, f"{processes} processes outlived the stop "
                                             f"deadline")
        if self.state in (ParentState.STOPPING, ParentState.KILLING) and not processes:
            self.update(ParentState.STOPPED, "every process has ended")
        return self.state

    def timeout(self, now: float) -> float | None:
        """Seconds until the state must be looked at again for the time alone."""
        if self.state is ParentState.STOPPING and self.stop_deadline is not None:
            return max(0.0, self.stop_deadline - now)
        return None
