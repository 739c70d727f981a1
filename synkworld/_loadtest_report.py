"""The load test's report: percentiles, the summary lines, and the plot as a hand-made SVG.

The SVG needs no plotting library (matplotlib is not one of synkworld's
dependencies): four time panels (bytes and frames per client, ping round
trip, connected clients) and the correctness verdict, drawn from the
result's `series`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

__all__ = ["percentile", "spread", "summary", "write_svg"]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank on the sorted values); 0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    return float(s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))])


def spread(values: Sequence[float], nd: int = 1) -> dict[str, float]:
    """Median, p99, mean, min and max of `values` (all 0 for none), rounded to `nd` places."""
    if not values:
        return {"median": 0.0, "p99": 0.0, "mean": 0.0, "min": 0.0, "max": 0.0}
    return {
        "median": round(percentile(values, 50), nd),
        "p99": round(percentile(values, 99), nd),
        "mean": round(math.fsum(values) / len(values), nd),
        "min": round(min(values), nd),
        "max": round(max(values), nd),
    }


def summary(result: dict[str, Any]) -> str:
    """A few lines a person reads at the end of a run."""
    c = result["clients"]
    b, p, f = (
        result["bytes_per_client_s"],
        result["payload_bytes_per_client_s"],
        result["frames_per_client_s"],
    )
    rtt, err, chk = result["ping_rtt_ms"], result["errors_received"], result["correctness"]
    proto = result["server"].get("proto")
    payload = "binary frames" if proto == 2 else "JSON"
    lines = [
        f"clients: {c['connected']} of {c['requested']} connected"
        f" ({c['connect_failures']} failed), {c['closed_during_run']} closed during the run;"
        f" {result['window_s']:.1f} s measured; protocol v{proto}",
        f"per client: {b['median'] / 1024:.1f} KiB/s median, {b['p99'] / 1024:.1f} KiB/s p99"
        f" on the wire ({b['median'] / 1000:.1f} / {b['p99'] / 1000:.1f} kB/s;"
        f" {p['median'] / 1024:.1f} / {p['p99'] / 1024:.1f} KiB/s of {payload});"
        f" {f['median']:.1f} frames/s median, {f['p99']:.1f} p99"
        f" ({result['tick_frames_per_client_s']['median']:.1f} tick frames/s median)",
        f"ping round trip: p50 {rtt['p50']:.1f} ms, p99 {rtt['p99']:.1f} ms"
        f" ({rtt['samples']} pongs)",
        f"errors received: {err['total']}"
        + (f" {dict(err['by_code'])}" if err["total"] else "")
        + f"; resyncs: {result['resyncs']['total']}",
        "correctness: "
        + ("PASS" if chk["ok"] else "FAIL")
        + f": {chk['checked']} of {chk['sampled']} sampled clients compared with a fresh"
        f" checker, {chk['mismatches']} mismatches, {chk['violations']} violations",
    ]
    for r in chk["clients"]:
        if not r["ok"]:
            why = r.get("reason") or "; ".join((r["examples"] + r["violation_examples"])[:3])
            lines.append(f"  client {r['index']}: {why}")
    lg = result["loadgen"]
    if lg["saturated"]:
        lines.append(
            "load generator saturated ("
            + "; ".join(lg["saturation_reasons"])
            + "): the figures may be its limit, not the server's"
        )
    return "\n".join(lines)


# -- the SVG --------------------------------------------------------------------------------

_W = 960
_LEFT, _RIGHT = 70, 24
_PANEL_H = 170
_GAP = 62
_TOP = 96
_COLOURS = ("#1f77b4", "#e4572e", "#2ca02c")


def _nice_ticks(hi: float, n: int = 4) -> list[float]:
    """Round-numbered ticks from 0 to at least `hi`."""
    if not hi > 0:
        hi = 1.0
    raw = hi / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    count = math.ceil(hi / step - 1e-9)
    return [round(i * step, 10) for i in range(count + 1)]


def _label(v: float) -> str:
    if v >= 10_000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def _panel(
    top: float,
    title: str,
    t: list[float],
    lines: list[tuple[str, list[float | None]]],
    t_max: float,
    window: tuple[float, float],
) -> list[str]:
    x0, x1 = _LEFT, _W - _RIGHT
    y0, y1 = top + _PANEL_H, top
    ymax = max((v for _, ys in lines for v in ys if v is not None), default=0.0)
    yticks = _nice_ticks(ymax)
    ytop = yticks[-1]

    def sx(v: float) -> float:
        return x0 + (x1 - x0) * (v / t_max if t_max > 0 else 0.0)

    def sy(v: float) -> float:
        return y0 - (y0 - y1) * (v / ytop if ytop > 0 else 0.0)

    out = [f'<text x="{x0}" y="{top - 10}" class="title">{escape(title)}</text>']
    # The ramp (connections still opening) and the time after the window, greyed out.
    ws, we = window
    if ws > 0:
        out.append(
            f'<rect x="{x0}" y="{y1}" width="{sx(ws) - x0:.1f}" height="{_PANEL_H}" class="ramp"/>'
        )
    if we < t_max:
        out.append(
            f'<rect x="{sx(we):.1f}" y="{y1}" width="{x1 - sx(we):.1f}"'
            f' height="{_PANEL_H}" class="ramp"/>'
        )
    for v in yticks:
        y = sy(v)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" class="ytick">{_label(v)}</text>')
    for v in _nice_ticks(t_max, 8):
        if v > t_max + 1e-9:
            break
        x = sx(v)
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + 4}" class="axis"/>')
        out.append(f'<text x="{x:.1f}" y="{y0 + 17}" class="xtick">{_label(v)}</text>')
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" class="axis"/>')
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" class="axis"/>')
    lx = x1
    for (name, ys), colour in reversed(list(zip(lines, _COLOURS, strict=False))):
        segment: list[str] = []
        segments: list[list[str]] = []
        for tv, yv in zip(t, ys, strict=True):
            if yv is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append(f"{sx(tv):.1f},{sy(yv):.1f}")
        if segment:
            segments.append(segment)
        for seg in segments:
            if len(seg) == 1:
                cx, cy = seg[0].split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{colour}"/>')
            else:
                out.append(
                    f'<polyline points="{" ".join(seg)}" fill="none" stroke="{colour}"'
                    ' stroke-width="1.6"/>'
                )
        lx -= 8 + 7 * len(name) + 18
        out.append(
            f'<line x1="{lx}" y1="{top - 14}" x2="{lx + 14}" y2="{top - 14}" stroke="{colour}"'
            ' stroke-width="2.5"/>'
        )
        out.append(f'<text x="{lx + 18}" y="{top - 10}" class="legend">{escape(name)}</text>')
    return out


def write_svg(result: dict[str, Any], path: Path) -> Path:
    """Draws the result's time series and verdict into an SVG file at `path`."""
    s = result["series"]
    t: list[float] = s["t_s"]
    t_max = max(t, default=1.0) or 1.0
    window = (result["window_start_s"], result["window_start_s"] + result["window_s"])

    def kib(values: list[float | None]) -> list[float | None]:
        return [None if v is None else v / 1024 for v in values]

    panels: list[tuple[str, list[tuple[str, list[float | None]]]]] = [
        (
            "bytes per client (KiB/s, on the wire)",
            [
                ("median", kib(s["bytes_per_client_s_median"])),
                ("p99", kib(s["bytes_per_client_s_p99"])),
            ],
        ),
        (
            "frames per client (frames/s)",
            [("median", s["frames_per_client_s_median"]), ("p99", s["frames_per_client_s_p99"])],
        ),
        (
            "ping round trip (ms)",
            [("p50", s["ping_rtt_ms_p50"]), ("p99", s["ping_rtt_ms_p99"])],
        ),
        ("connected clients", [("connected", [float(v) for v in s["connected"]])]),
    ]
    height = _TOP + len(panels) * (_PANEL_H + _GAP) + 70
    chk = result["correctness"]
    verdict = "PASS" if chk["ok"] else "FAIL"
    b, f, rtt = result["bytes_per_client_s"], result["frames_per_client_s"], result["ping_rtt_ms"]
    c = result["clients"]
    head = [
        f"synkworld loadtest {result['url']} (protocol v{result['server'].get('proto')}):"
        f" {c['connected']} of {c['requested']} clients, {result['window_s']:.1f} s measured",
        f"per client {b['median'] / 1024:.1f} KiB/s median, {b['p99'] / 1024:.1f} p99;"
        f" {f['median']:.1f} frames/s median, {f['p99']:.1f} p99;"
        f" ping p50 {rtt['p50']:.1f} ms, p99 {rtt['p99']:.1f} ms;"
        f" errors {result['errors_received']['total']}, resyncs {result['resyncs']['total']},"
        f" connect failures {c['connect_failures']}",
    ]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}"'
        f' viewBox="0 0 {_W} {height}" font-family="sans-serif">',
        "<style>"
        ".title{font-size:13px;font-weight:bold;fill:#222}"
        ".head{font-size:14px;fill:#222}.sub{font-size:12px;fill:#444}"
        ".ytick{font-size:11px;fill:#555;text-anchor:end}"
        ".xtick{font-size:11px;fill:#555;text-anchor:middle}"
        ".legend{font-size:11px;fill:#333}"
        ".grid{stroke:#e5e5e5;stroke-width:1}.axis{stroke:#888;stroke-width:1}"
        ".ramp{fill:#f2f2f2}.pass{fill:#1a7f37}.fail{fill:#c62828}"
        "</style>",
        f'<rect width="{_W}" height="{height}" fill="white"/>',
        f'<text x="{_LEFT}" y="26" class="head">{escape(head[0])}</text>',
        f'<text x="{_LEFT}" y="46" class="sub">{escape(head[1])}</text>',
        f'<text x="{_LEFT}" y="66" class="sub {"pass" if chk["ok"] else "fail"}">'
        + escape(
            f"correctness {verdict}: {chk['checked']} of {chk['sampled']} sampled clients equal"
            f" to a fresh checker at the same tick; {chk['mismatches']} mismatches,"
            f" {chk['violations']} protocol violations"
        )
        + "</text>",
    ]
    for i, (title, lines) in enumerate(panels):
        top = _TOP + 20 + i * (_PANEL_H + _GAP)
        out += _panel(top, title, t, lines, t_max, window)
    bottom = _TOP + 20 + len(panels) * (_PANEL_H + _GAP) - _GAP + 40
    out.append(
        f'<text x="{(_LEFT + _W - _RIGHT) / 2}" y="{bottom}" class="xtick">'
        "seconds since the start (grey: connections ramping up, and after the window)</text>"
    )
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path
