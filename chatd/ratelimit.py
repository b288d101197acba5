"""Token buckets (sans-I/O: the caller passes the time)."""

from __future__ import annotations


class TokenBucket:
    """`burst` requests at once, then `rate` per second."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 on success, else the seconds until one is available."""
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def wait(self, now: float) -> float:
        """Seconds until a token is available (0.0: now), without taking it."""
        tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled to its burst (so it remembers nothing)."""
        return self.tokens + (now - self.stamp) * self.rate >= self.burst

    def reconfigure(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = min(self.tokens, float(burst))
