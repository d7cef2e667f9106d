"""Vega-Lite specifications of the report's charts: plain dicts, drawn in the page by vega-embed.

Strings from result files only ever appear as data values (never as field names or in Vega
expressions), so a framework called ``a.b[0]`` or ``"); alert(1)//`` is just a label. Every
chart is as wide as its container (``width: "container"``) so it fits a phone and a desktop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cnnbench.compare import Metric
from cnnbench.html.data import PHASES, VERDICT_COLOURS, History

Spec = dict[str, Any]

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
CONFIG: Spec = {
    "font": FONT,
    "view": {"stroke": None},
    "background": None,
    "axis": {
        "labelFontSize": 11,
        "titleFontSize": 12,
        "titleFontWeight": "normal",
        "labelLimit": 170,
        "gridColor": "#e4e4e4",
        "domainColor": "#888",
    },
    "legend": {
        "orient": "bottom",
        "direction": "horizontal",
        "columns": 2,
        "labelLimit": 260,
        "labelFontSize": 11,
        "titleFontSize": 12,
        "titleFontWeight": "normal",
        # several legends (colour, dash pattern) stack under the chart instead of side by side
        "layout": {"bottom": {"anchor": "start", "direction": "vertical"}},
    },
    "title": {"anchor": "start", "fontSize": 14, "fontWeight": 600, "subtitleFontSize": 11, "subtitleColor": "#555"},
    "point": {"size": 40},
}
#: Colours of the phases, from the same colour-blind-safe palette; "other" is harness time, grey.
PHASE_COLOURS = ("#56B4E9", "#0072B2", "#F0E442", "#E69F00", "#009E73", "#CC79A7", "#BBBBBB")


def _base(title: str, subtitle: str | None = None, height: Any = 240) -> Spec:
    spec: Spec = {
        "title": {"text": title, **({"subtitle": subtitle} if subtitle else {})},
        "width": "container",
        "height": height,
        "autosize": {"type": "fit-x", "contains": "padding"},
        "config": CONFIG,
    }
    return spec


def _colour(colours: dict[str, str], legend: bool = True) -> Spec:
    """The framework colour channel: the same colour for a framework in every chart of the report."""
    names = list(colours)
    channel: Spec = {
        "field": "framework",
        "type": "nominal",
        "title": "framework",
        "scale": {"domain": names, "range": [colours[n] for n in names]},
    }
    # layers share the legend, and a faint layer (bands, spreads) would fade its symbols: keep them solid
    channel["legend"] = {"symbolOpacity": 1} if legend else None
    return channel


def _band_height(names: Sequence[str], step: int) -> int:
    """A fixed height for one band per name (a Vega-Lite "step" height would drop the fit-to-width)."""
    return max(60, step * len(set(names)))


def _frameworks_axis(names: Sequence[str]) -> Spec:
    return {"field": "framework", "type": "nominal", "title": None, "sort": list(names)}


def epoch_chart(
    points: Sequence[dict[str, Any]],
    colours: dict[str, str],
    field: str,
    title: str,
    axis_title: str,
    tooltip_field: str,
) -> Spec | None:
    """A curve per framework over the epochs (median of the repeats; the band spans the repeats)."""
    shown = [p for p in points if p.get(field) is not None]
    if not shown:
        return None
    spread = any(p["repeats"] > 1 for p in shown)
    x = {
        "field": "epoch",
        "type": "quantitative",
        "title": "epoch",
        "axis": {"tickMinStep": 1, "format": "d"},
        "scale": {"nice": False},
    }
    layers: list[Spec] = []
    if spread:
        layers.append(
            {
                "mark": {"type": "area", "opacity": 0.18},
                "encoding": {
                    "x": x,
                    "y": {"field": f"{field}_lo", "type": "quantitative"},
                    "y2": {"field": f"{field}_hi"},
                    "color": _colour(colours),
                },
            }
        )
    layers.append(
        {
            "mark": {"type": "line", "point": True, "strokeWidth": 2},
            "encoding": {
                "x": x,
                "y": {"field": field, "type": "quantitative", "title": axis_title, "scale": {"zero": False}},
                "color": _colour(colours),
                "tooltip": [
                    {"field": "framework", "title": "framework"},
                    {"field": "epoch", "title": "epoch"},
                    {"field": tooltip_field, "title": axis_title},
                    {"field": "repeats", "title": "repeats"},
                ],
            },
        }
    )
    subtitle = "median over the repeats; band: their range" if spread else None
    return {**_base(title, subtitle), "data": {"values": list(shown)}, "layer": layers}


def throughput_chart(
    repeats: Sequence[dict[str, Any]],
    summaries: Sequence[dict[str, Any]],
    colours: dict[str, str],
    kind: str,
    title: str,
) -> Spec | None:
    """Each repeat as a dot, the inter-quartile range as a bar and the median as a tick, per framework."""
    dots = [p for p in repeats if p["kind"] == kind]
    summary = [s for s in summaries if s["kind"] == kind]
    if not summary:
        return None
    names = [s["framework"] for s in summary]
    y = _frameworks_axis(names)
    x_title = "samples/s (dots: repeats, bar: inter-quartile range, tick: median)"
    tooltip = [
        {"field": "framework", "title": "framework"},
        {"field": "text", "title": "median ± half IQR"},
        {"field": "repeats", "title": "repeats"},
    ]
    layers: list[Spec] = [
        {
            "data": {"values": list(summary)},
            "mark": {"type": "rule", "strokeWidth": 6, "opacity": 0.35},
            "encoding": {
                "y": y,
                "x": {"field": "q1", "type": "quantitative", "title": x_title, "scale": {"zero": True}},
                "x2": {"field": "q3"},
                "color": _colour(colours, legend=False),
                "tooltip": tooltip,
            },
        },
        {
            "data": {"values": list(summary)},
            "mark": {"type": "tick", "thickness": 2.5, "size": 20},
            "encoding": {
                "y": y,
                "x": {"field": "median", "type": "quantitative"},
                "color": _colour(colours, legend=False),
                "tooltip": tooltip,
            },
        },
        {
            "data": {"values": list(dots)},
            "mark": {"type": "point", "filled": True, "opacity": 0.85, "size": 45},
            "encoding": {
                "y": y,
                "x": {"field": "value", "type": "quantitative"},
                "color": _colour(colours, legend=False),
                "tooltip": [
                    {"field": "framework", "title": "framework"},
                    {"field": "repeat", "title": "repeat"},
                    {"field": "value_text", "title": "samples/s"},
                ],
            },
        },
    ]
    return {**_base(title, height=_band_height(names, 34)), "layer": layers}


def phases_chart(points: Sequence[dict[str, Any]]) -> Spec | None:
    """Where each framework's wall time goes: the phases as stacked bars (medians over repeats)."""
    if not points:
        return None
    names = list(dict.fromkeys(p["framework"] for p in points))
    return {
        **_base(
            "Phases",
            "median seconds over the repeats; 'other' is harness time between phases",
            height=_band_height(names, 30),
        ),
        "data": {"values": list(points)},
        "mark": {"type": "bar"},
        "encoding": {
            "y": _frameworks_axis(names),
            "x": {"field": "seconds", "type": "quantitative", "title": "seconds", "stack": "zero"},
            "color": {
                "field": "phase",
                "type": "nominal",
                "title": "phase",
                "sort": list(PHASES),
                "scale": {"domain": list(PHASES), "range": list(PHASE_COLOURS)},
            },
            "order": {"field": "order", "type": "quantitative"},
            "tooltip": [
                {"field": "framework", "title": "framework"},
                {"field": "phase", "title": "phase"},
                {"field": "text", "title": "seconds"},
            ],
        },
    }


def efficiency_chart(points: Sequence[dict[str, Any]], peak: float | None, colours: dict[str, str]) -> Spec | None:
    """Achieved training GFLOP/s per framework against the machine's measured matmul ceiling."""
    if not points:
        return None
    names = [p["framework"] for p in points]
    layers: list[Spec] = [
        {
            "data": {"values": list(points)},
            "mark": {"type": "bar"},
            "encoding": {
                "y": _frameworks_axis(names),
                "x": {"field": "gflops", "type": "quantitative", "title": "achieved training GFLOP/s"},
                "color": _colour(colours, legend=False),
                "tooltip": [
                    {"field": "framework", "title": "framework"},
                    {"field": "text", "title": "GFLOP/s (% of ceiling)"},
                ],
            },
        }
    ]
    subtitle = "spec FLOPs per sample x steady-state samples/s"
    if peak is not None:
        label = f"matmul ceiling {peak:,.0f} GFLOP/s"
        layers.append(
            {
                "data": {"values": [{"peak": peak, "label": label}]},
                "mark": {"type": "rule", "strokeDash": [5, 3], "strokeWidth": 2, "color": "#333"},
                "encoding": {
                    "x": {"field": "peak", "type": "quantitative"},
                    "tooltip": [{"field": "label", "title": "ceiling"}],
                },
            }
        )
        subtitle += f"; dashed line: this machine's {label}"
    else:
        subtitle += "; no ceiling recorded with this run"
    return {**_base("Efficiency against the ceiling", subtitle, height=_band_height(names, 30)), "layer": layers}


def history_chart(found: History, colours: dict[str, str]) -> Spec:
    """One metric over the runs: a line per framework, configuration and machine, spreads and markers."""
    metric: Metric = found.metric
    unit = "%" if metric.fraction else metric.unit
    y_title = f"{metric.label} ({unit}), {metric.direction}" if unit else f"{metric.label}, {metric.direction}"
    x = {
        "field": "created",
        "type": "temporal",
        "title": "run date",
        "axis": {"format": "%b %d %H:%M", "labelOverlap": "greedy", "labelSeparation": 10},
    }
    number = ",.2f" if metric.fraction else f",.{metric.digits}f"
    y = {
        "field": "value",
        "type": "quantitative",
        "title": y_title,
        "scale": {"zero": False},
        "axis": {"format": number},
    }
    tooltip = [
        {"field": "series", "title": "series"},
        {"field": "date", "title": "date"},
        {"field": "commit", "title": "commit"},
        {"field": "run", "title": "run"},
        {"field": "value_text", "title": f"{metric.label} (median ± half IQR)"},
        {"field": "repeats", "title": "repeats"},
    ]
    line: Spec = {
        "mark": {"type": "line", "point": True, "strokeWidth": 2},
        "encoding": {
            "x": x,
            "y": y,
            "color": _colour(colours),
            "detail": {"field": "series", "type": "nominal"},
            "tooltip": tooltip,
        },
    }
    if found.variants:
        line["encoding"]["strokeDash"] = {
            "field": "variant",
            "type": "nominal",
            "title": "configuration · machine",
            "sort": list(found.variants),
            "legend": {
                "columns": 1,
                "symbolType": "stroke",
                "symbolFillColor": "transparent",
                "symbolStrokeColor": "#333",
                "symbolStrokeWidth": 2,
                "symbolSize": 300,
            },
        }
    layers: list[Spec] = []
    if found.rules:
        layers.append(
            {
                "data": {"values": list(found.rules)},
                "mark": {"type": "rule", "strokeDash": [4, 4], "strokeWidth": 2, "color": "#666"},
                "encoding": {
                    "x": {"field": "created", "type": "temporal"},
                    "tooltip": [{"field": "run", "title": "run"}, {"field": "text", "title": "change"}],
                },
            }
        )
    layers += [
        {
            "mark": {"type": "rule", "strokeWidth": 1.5, "opacity": 0.55},
            "encoding": {
                "x": x,
                "y": {"field": "q1", "type": "quantitative"},
                "y2": {"field": "q3"},
                "color": _colour(colours),
                "detail": {"field": "series", "type": "nominal"},
            },
        },
        line,
    ]
    if any(p["changed"] for p in found.points):  # an empty layer would log "infinite extent" warnings
        layers.append(
            {
                "transform": [{"filter": "datum.changed != ''"}],
                "mark": {
                    "type": "point",
                    "shape": "diamond",
                    "size": 170,
                    "filled": False,
                    "strokeWidth": 1.6,
                    "color": "#000",
                },
                "encoding": {"x": x, "y": y, "tooltip": [*tooltip, {"field": "changed", "title": "changed"}]},
            }
        )
    if any(p["regression"] for p in found.points):
        layers.append(
            {
                "transform": [{"filter": "datum.regression != ''"}],
                "mark": {
                    "type": "point",
                    "shape": "triangle-down",
                    "size": 190,
                    "filled": True,
                    "color": VERDICT_COLOURS["regression"],
                    "stroke": "#000",
                    "strokeWidth": 1,
                },
                "encoding": {"x": x, "y": y, "tooltip": [*tooltip, {"field": "regression", "title": "regression"}]},
            }
        )
    return {
        **_base(
            metric.label[:1].upper() + metric.label[1:],
            "vertical bars: inter-quartile range of the repeats",
            height=260,
        ),
        "data": {"values": list(found.points)},
        "layer": layers,
    }


def comparison_chart(points: Sequence[dict[str, Any]]) -> Spec | None:
    """Every framework and metric's relative change, signed so that right is better, coloured by verdict."""
    if not points:
        return None
    labels = [p["label"] for p in points]
    present = {p["verdict"] for p in points}
    verdicts = [v for v in VERDICT_COLOURS if v in present] + sorted(present - set(VERDICT_COLOURS))
    return {
        **_base(
            "Change per framework and metric",
            "right of zero is better for every metric (lower times and memory, higher throughput and accuracy)",
            height=_band_height(labels, 20),
        ),
        "layer": [
            {
                "data": {"values": list(points)},
                "mark": {"type": "bar"},
                "encoding": {
                    "y": {"field": "label", "type": "nominal", "title": None, "sort": labels},
                    "x": {"field": "better_pct", "type": "quantitative", "title": "change in %, toward better"},
                    "color": {
                        "field": "verdict",
                        "type": "nominal",
                        "title": "verdict",
                        "scale": {"domain": verdicts, "range": [VERDICT_COLOURS.get(v, "#777777") for v in verdicts]},
                    },
                    "tooltip": [
                        {"field": "framework", "title": "framework"},
                        {"field": "metric", "title": "metric"},
                        {"field": "baseline", "title": "baseline"},
                        {"field": "current", "title": "current"},
                        {"field": "change", "title": "change"},
                        {"field": "verdict", "title": "verdict"},
                        {"field": "evidence", "title": "evidence"},
                    ],
                },
            },
            {
                "data": {"values": [{"zero": 0}]},
                "mark": {"type": "rule", "color": "#333"},
                "encoding": {"x": {"field": "zero", "type": "quantitative"}},
            },
        ],
    }
