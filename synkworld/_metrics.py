"""/metrics through prometheus_client: a collector that reads the components' statistics().

Each scrape asks the tick loop, the world, the transport's counters, the
persistence and the HTTP guard for their `statistics()` (frozen snapshots) and
turns them into metric families; nothing is counted twice. Durations are
prometheus_client histograms fed as ticks end and calls return. The process's
own figures (CPU, memory, fds) come from prometheus_client's process
collector. Each server has a registry of its own, so that two servers in one
process (tests) never share a metric.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from synkworld._cell_counters import CellStatistics

__all__ = ["MetricsSource", "ServerMetrics", "StatisticsCollector", "cell_families", "families"]

_TICK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
_CALL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

MetricsSource = Callable[[], Iterable[Metric]]
"""Something /metrics reads on every scrape: it returns metric families."""


class ServerMetrics:
    """The counters the transport keeps itself, the server's registry and its histograms."""

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self.connections_total = 0
        self.refused_total = 0
        self.closed_slow_total = 0
        self.frames_written = 0
        self.bytes_written = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.tick_duration = Histogram(
            "synkworld_tick_duration_seconds",
            "Duration of one tick.",
            buckets=_TICK_BUCKETS,
            registry=self.registry,
        )
        self.call_duration = Histogram(
            "synkworld_call_duration_seconds",
            "Duration of call handlers (the count is the calls), by handler and outcome.",
            ["handler", "outcome"],
            buckets=_CALL_BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)

    def observe_call(self, handler: str, outcome: str, seconds: float) -> None:
        """Counts one call: its handler, `ok` or its error code, and how long it took."""
        self.call_duration.labels(handler, outcome).observe(seconds)

    def text(self) -> str:
        """Every metric of the registry in the Prometheus text format."""
        return generate_latest(self.registry).decode()


class StatisticsCollector(Collector):
    """Yields the metric families of whatever `sources` read (called on every scrape)."""

    def __init__(self, sources: list[MetricsSource]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self._sources:
            yield from source()


def families(
    values: Iterable[tuple[str, str, str, float]],
    labelled: Iterable[tuple[str, str, str, str, dict[str, float]]] = (),
) -> list[Metric]:
    """Metric families from (name, kind, help, value) and (name, kind, help, label, {label: v})."""
    out: list[Metric] = []
    for name, kind, help_text, value in values:
        family: Any = (
            CounterMetricFamily(name, help_text)
            if kind == "counter"
            else GaugeMetricFamily(name, help_text)
        )
        family.add_metric([], value)
        out.append(family)
    for name, kind, help_text, label, by_label in labelled:
        family = (
            CounterMetricFamily(name, help_text, labels=[label])
            if kind == "counter"
            else GaugeMetricFamily(name, help_text, labels=[label])
        )
        for label_value, value in sorted(by_label.items()):
            family.add_metric([label_value], value)
        out.append(family)
    return out


def cell_families(cells: CellStatistics) -> list[Metric]:
    """The hottest keys' series: the top k by bytes per second and the top k by subscribers.

    Only the top k ever get a series (a label per cell would be thousands of
    series); a key that leaves the top k stops being reported, and goes stale.
    """
    return families(
        [
            (
                "synkworld_keys_subscribed",
                "gauge",
                "Keys at least one client holds.",
                cells.keys_held,
            ),
            (
                "synkworld_subscriptions",
                "gauge",
                "Keys held, summed over the clients.",
                cells.subscriptions,
            ),
        ],
        [
            (
                "synkworld_cell_bytes_per_second",
                "gauge",
                "Frame bytes per second the key's batches went out as, over a sliding "
                "window; the top keys by this figure only.",
                "key",
                {f.key: f.bytes_per_s for f in cells.by_bytes},
            ),
            (
                "synkworld_cell_subscribers",
                "gauge",
                "Clients holding the key; the top keys by this figure only.",
                "key",
                {f.key: float(f.subscribers) for f in cells.by_subscribers},
            ),
        ],
    )
