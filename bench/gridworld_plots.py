"""PNG plots of grid-world results (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

__all__ = ["plot_result"]

_COLORS = {"synkworld": "tab:blue", "naive": "tab:red"}
# The parts of a frame_breakdown, by protocol (bench/gridworld_cache.py).
_PARTS = {
    1: [
        ("envelope", "frame envelope"),
        ("per_cell_overhead", "per-cell overhead"),
        ("mv_ids", "mv ids"),
        ("mv_numbers", "mv numbers"),
        ("mod_add_rem_entries", "add/mod/rem entries"),
        ("sub_and_snapshots", "sub + snapshots"),
    ],
    2: [
        ("header", "frame header"),
        ("per_cell_overhead", "per-cell overhead (key, parts, counts)"),
        ("motion_entries", "motion entries"),
        ("msgpack_entries", "msgpack adds/mods"),
        ("leaves_and_rems", "leaves + rems"),
        ("sub_and_snapshots", "sub + snapshots"),
    ],
}


# bench.gridworld.BYTES_PER_CLIENT_LIMIT_V2 (not imported: the plots need nothing else).
_V2_BYTES_LIMIT = {(2_000, 100): 7_000, (10_000, 500): 25_000}


def _proto(sc: dict[str, Any]) -> int:
    return int(sc.get("proto", 1))  # results from before protocol v2 have none


def _title(sc: dict[str, Any]) -> str:
    return (
        f"grid-world E={sc['entities']} C={sc['clients']} protocol v{_proto(sc)} "
        f"{sc['tick_rate_hz']:g} Hz, {sc['seconds']:g} s measured"
    )


def _tag(sc: dict[str, Any]) -> str:
    """The plots' file names: the size, then the protocol (v2 only) and deflate."""
    return (
        f"E{sc['entities']}-C{sc['clients']}"
        + (f"-v{_proto(sc)}" if _proto(sc) != 1 else "")
        + ("-deflate" if sc.get("compression") else "")
    )


def plot_result(result: dict[str, Any], out: Path) -> list[Path]:
    """Writes the plots a result calls for into `out`; returns their paths.

    A run's plots are named after its size (``E10000-C500_ticks.png``), so that
    runs of several sizes can sit side by side; sweeps write ``sweep_<axis>.png``.
    """
    paths: list[Path] = []
    if "runs" in result:
        paths += _plot_runs(result, out)
    if "scaling" in result:
        paths.append(_plot_scaling(result, out))
    for axis, points in result.get("sweeps", {}).items():
        paths.append(_plot_sweep(result["scenario"], axis, points, out))
    return paths


def _plot_scaling(result: dict[str, Any], out: Path) -> Path:
    """CPU per tick: one process, then each of N and their sum."""
    g = result["scaling"]
    sc = result["scenario"]
    n = g["processes"]
    labels = ["1 process"] + [f"process {i}" for i in range(n)] + [f"sum of {n}"]
    cpu = [g["cpu_ms_per_tick_single"], *g["cpu_ms_per_tick_each"], g["cpu_ms_per_tick_sum"]]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = range(len(labels))
    ax.bar(xs, cpu, color=["tab:blue"] + ["tab:green"] * n + ["tab:olive"])
    ax.axhline(g["cpu_ms_per_tick_single"] / 0.8, color="tab:red", lw=0.8, ls="--")
    ax.text(
        0, g["cpu_ms_per_tick_single"] / 0.8, " sum at efficiency 0.8", color="tab:red", va="bottom"
    )
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("ms of CPU per tick")
    ax.set_title(f"{_title(sc)}: efficiency {g['efficiency']:.2f} (one / sum of {n})", fontsize=10)
    tag = f"E{sc['entities']}-C{sc['clients']}-P{n}"
    return _save(fig, out / f"{tag}_scaling.png")


def _plot_runs(result: dict[str, Any], out: Path) -> list[Path]:
    runs: dict[str, Any] = result["runs"]
    sc = result["scenario"]
    title = _title(sc)
    tag = _tag(sc)
    paths = []

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, run in runs.items():
        ys = run["series"]["tick_ms"]
        s = run["server"]
        ax.plot(
            range(len(ys)),
            ys,
            lw=0.8,
            color=_COLORS.get(name),
            label=f"{name}: p50 {s['tick_ms_p50']:.1f}, p99 {s['tick_ms_p99']:.1f} ms, "
            f"{s['cpu_ms_per_tick']:.1f} ms CPU/tick",
        )
    ax.axhline(40, ls="--", color="gray", lw=1, label="p99 target 40 ms")
    ax.axhline(1000 / sc["tick_rate_hz"], ls=":", color="black", lw=1, label="tick period")
    ax.set_xlabel("tick in the measured window")
    ax.set_ylabel("tick duration (ms, server side)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / f"{tag}_ticks.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, run in runs.items():
        qs = run["series"]["latency_ms_quantiles"]
        ax.plot(qs, [q / 100 for q in range(len(qs))], color=_COLORS.get(name), label=name)
        limit = run["latency_ms"]["limit_p99"]
    ax.axvline(limit, ls="--", color="gray", lw=1, label=f"p99 target {limit:g} ms")
    ax.set_xlabel("change-to-client latency (ms): arrival minus tick start")
    ax.set_ylabel("fraction of sampled frames")
    ax.set_title(title)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / f"{tag}_latency.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, run in runs.items():
        kib = [v / 1024 for v in run["series"]["bytes_per_client_s"]]
        ax.hist(kib, bins=40, alpha=0.6, color=_COLORS.get(name), label=name)
    ax.axvline(20, ls="--", color="gray", lw=1, label="20 KiB/s (target at E=2000, C=100)")
    v2_limit = _V2_BYTES_LIMIT.get((sc["entities"], sc["clients"]))
    if _proto(sc) == 2 and v2_limit is not None:
        ax.axvline(
            v2_limit / 1024,
            ls=":",
            color="black",
            lw=1,
            label=f"{v2_limit / 1000:g} kB/s (protocol v2's target at this size)",
        )
    ax.set_xlabel("KiB received per client per second")
    ax.set_ylabel("clients")
    ax.set_title(title)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / f"{tag}_clients.png"))

    fig, ax = plt.subplots(figsize=(9, 2.6 + 0.6 * len(runs)))
    names = list(runs)
    for row, name in enumerate(names):
        per_frame = runs[name]["frame_breakdown"]["bytes_per_frame"]
        left = 0.0
        for i, (key, label) in enumerate(_PARTS[_proto(sc)]):
            v = per_frame.get(key, 0.0)
            ax.barh(row, v, left=left, color=f"C{i}", label=label if row == 0 else None)
            left += v
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel(f"bytes per protocol v{_proto(sc)} tick frame (sampled clients)")
    ax.set_title("where a frame's bytes go: " + title)
    ax.legend(fontsize=7, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    paths.append(_save(fig, out / f"{tag}_breakdown.png"))

    if len(runs) > 1:
        fig, axes = plt.subplots(1, 3, figsize=(11, 4))
        metrics: list[tuple[str, list[float]]] = [
            ("server CPU ms per tick", [runs[n]["server"]["cpu_ms_per_tick"] for n in names]),
            ("tick p99 (ms)", [runs[n]["server"]["tick_ms_p99"] for n in names]),
            (
                "KiB per client per s",
                [runs[n]["clients"]["bytes_per_client_s"]["mean"] / 1024 for n in names],
            ),
        ]
        for ax, (label, values) in zip(axes, metrics, strict=True):
            ax.bar(names, values, color=[_COLORS.get(n, "gray") for n in names])
            for i, v in enumerate(values):
                ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
            ax.set_title(label, fontsize=9)
        fig.suptitle("synkworld vs the naive per-client baseline: " + title, fontsize=9)
        axes[2].set_xlabel(f"protocol v{_proto(sc)}", fontsize=8)
        paths.append(_save(fig, out / f"{tag}_compare.png"))
    return paths


def _plot_sweep(sc: dict[str, Any], axis: str, points: list[dict[str, Any]], out: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    rate = right.twinx()
    xs = [p["value"] for p in points]
    for name in ("synkworld", "naive"):
        rows = [p.get(name) for p in points]
        if not any(rows):
            continue
        color = _COLORS[name]
        px = [x for x, r in zip(xs, rows, strict=True) if r]
        got = [r for r in rows if r]
        left.plot(
            px, [r["cpu_ms_per_tick"] for r in got], "o-", color=color, label=f"{name}: CPU ms/tick"
        )
        left.plot(
            px,
            [r["tick_ms_p99"] for r in got],
            "s--",
            color=color,
            alpha=0.6,
            label=f"{name}: tick p99 ms",
        )
        sat = [
            (x, r["cpu_ms_per_tick"])
            for x, r in zip(px, got, strict=True)
            if r["loadgen_saturated"]
        ]
        if sat:
            left.scatter(
                *zip(*sat, strict=True),
                marker="x",
                s=80,
                color="black",
                zorder=5,
                label="load generator saturated" if name == "synkworld" else None,
            )
        right.plot(
            px,
            [r["bytes_per_client_s"] / 1024 for r in got],
            "o-",
            color=color,
            label=f"{name}: KiB/client/s",
        )
        rate.plot(
            px,
            [r["tick_rate_hz"] for r in got],
            "^:",
            color=color,
            alpha=0.6,
            label=f"{name}: achieved ticks/s (right axis)",
        )
    left.axhline(1000 / sc["tick_rate_hz"], ls=":", color="black", lw=1, label="tick period")
    left.set_xlabel(axis)
    left.set_ylabel("ms")
    left.legend(fontsize=7)
    rate.axhline(sc["tick_rate_hz"], ls=":", color="gray", lw=1)
    rate.set_ylim(0, sc["tick_rate_hz"] * 1.1)
    rate.set_ylabel("achieved ticks/s")
    right.set_xlabel(axis)
    right.set_ylabel("KiB per client per second")
    lines = right.get_legend_handles_labels()
    more = rate.get_legend_handles_labels()
    right.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7)
    fixed = "C" if axis == "entities" else "E"
    fixed_v = sc["clients"] if axis == "entities" else sc["entities"]
    fig.suptitle(
        f"grid-world cost over {axis} ({fixed}={fixed_v}, protocol v{_proto(sc)}, "
        f"{sc['seconds']:g} s per point)",
        fontsize=10,
    )
    suffix = f"-v{_proto(sc)}" if _proto(sc) != 1 else ""
    return _save(fig, out / f"sweep_{axis}{suffix}.png")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
