"""Server metrics in the Prometheus text format, read from the components' statistics."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Sequence

__all__ = ["Histogram", "ServerMetrics", "render"]

_TICK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)


class Histogram:
    """A cumulative histogram with fixed buckets, as Prometheus expects."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Adds one observation."""
        self._counts[bisect.bisect_left(self.buckets, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, count of observations <= it) for every bucket and +Inf."""
        out = []
        total = 0
        for bound, n in zip(self.buckets, self._counts, strict=False):
            total += n
            out.append((repr(bound), total))
        out.append(("+Inf", self.count))
        return out


class ServerMetrics:
    """Counters the server keeps itself (the rest come from statistics())."""

    def __init__(self) -> None:
        self.tick_duration = Histogram(_TICK_BUCKETS)
        self.errors: Counter[str] = Counter()
        self.connections_total = 0
        self.refused_total = 0
        self.closed_slow_total = 0
        self.frames_written = 0
        self.bytes_written = 0


Sample = tuple[str, str, str, dict[str, str], float]  # name, type, help, labels, value


def render(samples: Iterable[Sample], histograms: Iterable[tuple[str, str, Histogram]]) -> str:
    """Renders samples and histograms as Prometheus text exposition format 0.0.4."""
    lines: list[str] = []
    seen: set[str] = set()
    for name, kind, help_text, labels, value in samples:
        if name not in seen:
            seen.add(name)
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name}{_labels(labels)} {_value(value)}")
    for name, help_text, h in histograms:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} histogram")
        for bound, n in h.cumulative():
            lines.append(f'{name}_bucket{{le="{bound}"}} {n}')
        lines.append(f"{name}_sum {_value(h.sum)}")
        lines.append(f"{name}_count {h.count}")
    return "\n".join(lines) + "\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in labels.items()
    )
    return "{" + inner + "}"


def _value(v: float) -> str:
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v))
