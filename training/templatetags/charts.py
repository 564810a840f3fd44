"""Server-side SVG charts: no chart library, no script, and they render without JavaScript."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 520, 160, 52, 20, 8


@register.inclusion_tag("training/_line_chart.html")
def line_chart(name: str, points: list[tuple[int, float]]) -> dict[str, Any]:
    """A polyline of (step, value) points scaled into the plot area, with min/max labels."""
    steps = [p[0] for p in points] or [0]
    values = [p[1] for p in points] or [0.0]
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(values), max(values)
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    plot_w, plot_h = WIDTH - PAD_LEFT - 8, HEIGHT - PAD_BOTTOM - PAD_TOP

    def xy(step: int, value: float) -> str:
        x = PAD_LEFT + (plot_w * (step - x0) / (x1 - x0) if x1 > x0 else plot_w / 2)
        y = PAD_TOP + plot_h * (1 - (value - y0) / (y1 - y0))
        return f"{x:.1f},{y:.1f}"

    return {
        "name": name,
        "width": WIDTH,
        "height": HEIGHT,
        "points": " ".join(xy(s, v) for s, v in points),
        "single": len(points) == 1,
        "last": points[-1] if points else None,
        "y_min": y0,
        "y_max": y1,
        "x_min": x0,
        "x_max": x1,
        "left": PAD_LEFT,
        "bottom": HEIGHT - PAD_BOTTOM,
        "right": WIDTH - 8,
        "top": PAD_TOP,
    }


@register.inclusion_tag("training/_bar_chart.html")
def bar_chart(title: str, counts: dict[str, int] | list[tuple[str, int]]) -> dict[str, Any]:
    items = list(counts.items()) if isinstance(counts, dict) else list(counts)
    peak = max((c for _, c in items), default=0) or 1
    bar_w = (WIDTH - 20) / max(1, len(items))
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    bars = [
        {
            "label": label,
            "count": count,
            "x": 10 + i * bar_w + 1,
            "w": max(1.0, bar_w - 2),
            "h": plot_h * count / peak,
            "y": PAD_TOP + plot_h * (1 - count / peak),
            "tx": 10 + i * bar_w + bar_w / 2,
        }
        for i, (label, count) in enumerate(items)
    ]
    return {"title": title, "bars": bars, "width": WIDTH, "height": HEIGHT, "label_y": HEIGHT - 6}


@register.filter
def visible_whitespace(piece: str) -> str:
    """Token pieces as people can see them: a newline is drawn as ↵ and a tab as →."""
    return piece.replace("\n", "↵").replace("\t", "→")


@register.inclusion_tag("training/_funnel_chart.html")
def funnel_chart(title: str, counts: list[tuple[str, int]]) -> dict[str, Any]:
    """Horizontal bars, one per stage, labelled on the left: a funnel reads top to bottom."""
    row_height, label_width, width = 22, 150, WIDTH
    peak = max((c for _, c in counts), default=0) or 1
    bar_space = width - label_width - 60
    rows = [
        {
            "label": label,
            "count": count,
            "y": i * row_height + 4,
            "w": max(1.0, bar_space * count / peak),
            "text_y": i * row_height + 17,
            "count_x": label_width + max(1.0, bar_space * count / peak) + 6,
        }
        for i, (label, count) in enumerate(counts)
    ]
    return {
        "title": title,
        "rows": rows,
        "width": width,
        "label_width": label_width,
        "height": len(rows) * row_height + 8,
        "label_x": label_width - 6,
    }


@register.inclusion_tag("training/_multi_line_chart.html")
def multi_line_chart(
    title: str,
    series: dict[str, list[tuple[float, float]]],
    x_label: str = "step",
    marker_x: float | None = None,
    marker_label: str = "",
) -> dict[str, Any]:
    """Several (x, y) lines on one shared scale, with an optional vertical marker: how two
    measures move together (a reward against KL, the training score against an independent
    one)."""
    xs = [x for points in series.values() for x, _ in points] or [0.0]
    ys = [y for points in series.values() for _, y in points] or [0.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    plot_w, plot_h = WIDTH - PAD_LEFT - 8, HEIGHT - PAD_BOTTOM - PAD_TOP

    def x_of(x: float) -> float:
        return PAD_LEFT + (plot_w * (x - x0) / (x1 - x0) if x1 > x0 else plot_w / 2)

    def y_of(y: float) -> float:
        return PAD_TOP + plot_h * (1 - (y - y0) / (y1 - y0))

    lines = [
        {
            "label": label,
            "css": f"c{index % 4}",
            "points": " ".join(f"{x_of(x):.1f},{y_of(y):.1f}" for x, y in sorted(points)),
        }
        for index, (label, points) in enumerate(series.items())
        if points
    ]
    marker = None
    if marker_x is not None and x0 <= marker_x <= x1:
        marker = {"x": f"{x_of(marker_x):.1f}", "label": marker_label}
    return {
        "title": title,
        "lines": lines,
        "marker": marker,
        "x_label": x_label,
        "width": WIDTH,
        "height": HEIGHT,
        "x_min": x0,
        "x_max": x1,
        "y_min": y0,
        "y_max": y1,
        "left": PAD_LEFT,
        "bottom": HEIGHT - PAD_BOTTOM,
        "right": WIDTH - 8,
        "top": PAD_TOP,
    }


@register.simple_tag
def series_from_points(points: list[dict], x_key: str, **labels: str) -> dict[str, list]:
    """``{label: [(point[x_key], point[y_key]), ...]}`` for ``label=y_key`` pairs, skipping
    points where either is missing: turns recorded dicts into chart lines."""
    series: dict[str, list[tuple[float, float]]] = {}
    for y_key, label in labels.items():
        series[label] = [
            (p[x_key], p[y_key])
            for p in points or []
            if isinstance(p.get(x_key), int | float) and isinstance(p.get(y_key), int | float)
        ]
    return series


@register.simple_tag
def value_at(points: list[dict], step: Any, key: str) -> Any:
    """``point[key]`` of the point recorded at ``step`` (None when there is none)."""
    for point in points or []:
        if point.get("step") == step:
            return point.get(key)
    return None
