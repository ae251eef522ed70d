"""Chart.js configurations built from reports: the server decides what is drawn, Chart.js draws it.

Each function returns ``{"config": <Chart.js config>, "height": <px>}`` or None when the report has nothing to
draw. Configurations are plain JSON; ``config["gc"]["axes"]`` names the unit of an axis (``bytes``, ``sci``,
``secs``) and ``static/dashboard.js`` installs the matching tick and tooltip formatters, the only behaviour JSON
cannot carry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

BLUE, ORANGE, RED, GREEN, GREY, PURPLE = "#2563eb", "#ea580c", "#dc2626", "#16a34a", "#64748b", "#7c3aed"
STATUS_COLORS = {"passed": GREEN, "failed": RED, "inconclusive": PURPLE, "error": ORANGE, "queued": GREY,
                 "running": BLUE}
ROW_PX = 22  # height of one bar in horizontal bar charts, pixels

ChartSpec = dict[str, Any]


def _positive(value: Any) -> float | None:
    """A value a log axis can show (None leaves a gap: zero, negative, missing or non-finite)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def _axis(title: str, *, log: bool = False, kind: str | None = None, **extra: Any) -> dict[str, Any]:
    axis: dict[str, Any] = {"title": {"display": True, "text": title}, **extra}
    if log:
        axis["type"] = "logarithmic"
    if kind == "linear":
        axis["type"] = "linear"
    return axis


def _padded(axis: dict[str, Any], values: Sequence[float | None], *, log: bool = False) -> dict[str, Any]:
    """``axis`` with room around a value that is alone on it (one run, or every run the same): Chart.js would
    otherwise make that value the axis's edge and draw the point on it."""
    present = {v for v in values if v is not None}
    if len(present) != 1:
        return axis
    value = present.pop()
    if log:
        low, high = value / 10, value * 10
    else:
        low, high = value - (abs(value) / 2 or 1), value + (abs(value) / 2 or 1)
    return {**axis, "suggestedMin": low, "suggestedMax": high}


def _wide(values: Sequence[float | None], decades: float = 2.0) -> bool:
    """Whether positive ``values`` span at least ``decades`` orders of magnitude (then a log axis reads best)."""
    present = [v for v in values if v is not None and v > 0]
    return len(present) >= 2 and max(present) / min(present) >= 10 ** decades


def _spec(kind: str, labels: Sequence[Any] | None, datasets: list[dict[str, Any]], scales: dict[str, Any],
          *, units: Mapping[str, str] | None = None, height: int = 300, **options: Any) -> ChartSpec:
    config: dict[str, Any] = {
        "type": kind,
        "data": {"datasets": datasets},
        "options": {"scales": scales, "plugins": {"legend": {"position": "bottom"}}, **options},
        "gc": {"axes": dict(units or {})},
    }
    if labels is not None:
        config["data"]["labels"] = list(labels)
    return {"config": config, "height": height}


def _threshold(label: str, value: float, count: int, color: str) -> dict[str, Any]:
    """A horizontal dashed line across a category axis of ``count`` points."""
    return {"label": label, "data": [value] * count, "borderColor": color, "borderDash": [6, 4],
            "borderWidth": 1.5, "pointRadius": 0, "fill": False}


def layer_label(layer: Mapping[str, Any]) -> str:
    name = layer.get("name") or "(root)"
    call = layer.get("call") or 0
    return f"{name} #{call + 1}" if call else str(name)


def reference_signal(layers: Sequence[Mapping[str, Any]]) -> float | None:
    """The last layer's backward-signal norm, the reference the diagnosis divides by (forward order)."""
    reached = [layer for layer in layers if _positive(layer.get("grad_norm")) is not None
               and not layer.get("nonfinite_grad") and (layer.get("output_numel") or 0) > 0]
    return float(reached[-1]["grad_norm"]) if reached else None


def gradient_flow(report: Mapping[str, Any]) -> ChartSpec | None:
    """Backward-signal norm by layer depth on a log axis, with the vanishing/exploding thresholds.

    The diagnosis calls gradients vanishing when first/last < ``vanishing_ratio`` (and exploding above
    ``exploding_ratio``); drawn relative to the last layer's signal, a layer under the lower line gets a signal
    that much weaker than the output end of the network.
    """
    layers = (report.get("gradient_norms") or {}).get("layers") or []
    if not layers:
        return None
    labels = [layer_label(layer) for layer in layers]
    norms = [_positive(layer.get("grad_norm")) for layer in layers]
    thresholds = ((report.get("options") or {}).get("thresholds") or {})
    reference = reference_signal(layers)
    datasets: list[dict[str, Any]] = []
    colors = [BLUE] * len(layers)
    if reference is not None:
        low = reference * float(thresholds.get("vanishing_ratio", 1e-3))
        high = reference * float(thresholds.get("exploding_ratio", 1e3))
        colors = [RED if n is not None and not low <= n <= high else BLUE for n in norms]
        datasets += [_threshold(f"vanishing threshold ({low:.2g})", low, len(layers), ORANGE),
                     _threshold(f"exploding threshold ({high:.2g})", high, len(layers), RED)]
    datasets.insert(0, {"label": "‖∂loss/∂output‖ per layer", "data": norms, "borderColor": BLUE,
                        "pointBackgroundColor": colors, "pointRadius": 4, "spanGaps": True, "fill": False})
    return _spec("line", labels, datasets, {
        "x": _axis("layer depth (forward order)"),
        "y": _axis("backward-signal L2 norm (log)", log=True),
    }, units={"y": "sci"})


def parameter_norms(report: Mapping[str, Any]) -> ChartSpec | None:
    """Per-parameter gradient L2 norms, one horizontal bar each, log axis; parameters with NaN/Inf in red."""
    params = (report.get("gradient_norms") or {}).get("parameters") or []
    if not params:
        return None
    colors = [RED if (p.get("nan_count") or p.get("inf_count")) else BLUE for p in params]
    norms = [_positive(p.get("l2_norm")) for p in params]
    dataset = {"label": "gradient L2 norm", "data": norms, "backgroundColor": colors}
    log = _wide(norms, 1.0)
    x = _axis("gradient L2 norm (log)", log=True) if log else _axis("gradient L2 norm", beginAtZero=True)
    return _spec("bar", [p.get("name", "") for p in params], [dataset], {"x": x, "y": {"ticks": {"autoSkip": False}}},
                 units={"x": "sci"}, height=max(160, ROW_PX * len(params) + 70), indexAxis="y")


def memory_breakdown(report: Mapping[str, Any]) -> ChartSpec | None:
    """One training step's memory: parameters, gradients, Adam state and activations stacked, beside the
    measured forward+backward peak."""
    memory = report.get("memory")
    if not memory:
        return None
    parts = [("parameters", memory.get("parameter_bytes"), BLUE),
             ("gradients", memory.get("gradient_bytes"), PURPLE),
             ("optimizer state (Adam)", (memory.get("optimizer_state") or {}).get("adam_bytes"), GREY),
             ("activations saved for backward", memory.get("activation_bytes"), ORANGE)]
    datasets = [{"label": label, "data": [value, None], "backgroundColor": color, "stack": "step"}
                for label, value, color in parts]
    datasets.append({"label": "measured peak (forward + backward)", "data": [None, memory.get("peak_bytes")],
                     "backgroundColor": RED, "stack": "step"})
    return _spec("bar", ["training step with Adam", "measured peak"], datasets, {
        "x": _axis("bytes", stacked=True, beginAtZero=True), "y": {"stacked": True},
    }, units={"x": "bytes"}, height=190, indexAxis="y")


def activations_by_module(report: Mapping[str, Any], top: int = 20) -> ChartSpec | None:
    """Bytes saved for backward per module, largest first, at most ``top`` modules."""
    modules = ((report.get("memory") or {}).get("activations_by_module") or [])[:top]
    if not modules:
        return None
    labels = [f"{m.get('module') or '(root)'} ({m.get('type', '')})" for m in modules]
    dataset = {"label": "activation bytes", "data": [m.get("bytes") for m in modules], "backgroundColor": ORANGE}
    return _spec("bar", labels, [dataset], {"x": _axis("bytes", beginAtZero=True),
                                            "y": {"ticks": {"autoSkip": False}}},
                 units={"x": "bytes"}, height=max(160, ROW_PX * len(modules) + 70), indexAxis="y")


def batch_scaling(report: Mapping[str, Any], points: int = 40) -> ChartSpec | None:
    """Measured peak/activation bytes at each batch size, the fitted lines, and the memory budget.

    Both axes are logarithmic: the measured batches (a few samples) and the largest batch under the budget (often
    thousands) differ by orders of magnitude. The fitted line ``fixed + per_sample * batch`` is sampled at
    ``points`` geometrically spaced batch sizes so it draws as the curve it is on log-log axes.
    """
    memory = report.get("memory") or {}
    scaling = memory.get("batch_scaling") or {}
    if not scaling.get("possible"):
        return None
    sizes, peaks = scaling["batch_sizes"], scaling["peak_bytes"]
    p_fixed, p_per = float(scaling["peak_fixed_bytes"]), float(scaling["peak_per_sample_bytes"])
    budget = scaling.get("budget_bytes")
    largest = max(scaling.get("largest_batch") or 0, scaling.get("largest_batch_with_adam") or 0)
    x_min = max(1.0, min(sizes) / 2)
    x_max = max(max(sizes) * 4.0, largest * 1.5)
    xs = [x_min * (x_max / x_min) ** (i / (points - 1)) for i in range(points)]
    adam = float((memory.get("optimizer_state") or {}).get("adam_bytes") or 0)

    def fitted(label: str, offset: float, color: str) -> dict[str, Any]:
        data = [{"x": round(x, 3), "y": p_fixed + offset + p_per * x} for x in xs]
        return {"label": label, "data": [d for d in data if d["y"] > 0], "borderColor": color, "showLine": True,
                "pointRadius": 0, "borderWidth": 1.5}

    datasets = [
        {"label": "measured peak", "data": [{"x": b, "y": y} for b, y in zip(sizes, peaks, strict=False)],
         "backgroundColor": RED, "pointRadius": 6},
        {"label": "measured activations",
         "data": [{"x": b, "y": y} for b, y in zip(sizes, scaling.get("activation_bytes") or [], strict=False)],
         "backgroundColor": ORANGE, "pointRadius": 5, "pointStyle": "rect"},
        fitted("fitted peak", 0.0, RED),
        fitted("fitted peak + Adam state", adam, PURPLE),
    ]
    if budget:
        datasets.append({"label": f"budget {budget:,} bytes", "data": [{"x": x_min, "y": budget},
                                                                       {"x": x_max, "y": budget}],
                         "borderColor": GREEN, "borderDash": [6, 4], "showLine": True, "pointRadius": 0})
    return _spec("scatter", None, datasets, {
        "x": _axis("batch size (log)", log=True),
        "y": _axis("bytes (log)", log=True),
    }, units={"y": "bytes"})


def _history_labels(runs: Sequence[Any]) -> list[str]:
    return [(run.git_commit or run.id)[:8] for run in runs]


def model_history(rows: Sequence[tuple[Any, Any]]) -> dict[str, ChartSpec]:
    """Verdict, total gradient norm, memory and check time across a model's runs, oldest first.

    ``rows`` are ``(Run, RunReport | None)`` pairs; x labels are short commits (or run ids without a commit).
    """
    runs = [run for run, _ in rows]
    reports = [report for _, report in rows]
    labels = _history_labels(runs)
    verdict = {"label": "verdict", "data": [1] * len(runs),
               "backgroundColor": [STATUS_COLORS.get(run.status, GREY) for run in runs],
               "runStatus": [run.status for run in runs]}
    norms = [_positive(r.total_gradient_norm) if r else None for r in reports]
    norm = {"label": "total gradient norm", "data": norms, "borderColor": BLUE, "spanGaps": True}
    peak = {"label": "measured peak", "data": [r.peak_bytes if r else None for r in reports], "borderColor": RED,
            "spanGaps": True}
    activations = {"label": "activations", "data": [r.activation_bytes if r else None for r in reports],
                   "borderColor": ORANGE, "spanGaps": True}
    check_s = {"label": "check time", "data": [run.check_s for run in runs], "borderColor": PURPLE,
               "spanGaps": True}
    # offset: half a category of room at each end, so a single run is drawn in the middle, not on the y axis.
    x = _axis("commit (oldest → newest)", offset=True)
    log_norms = _wide(norms)
    norm_axis = _padded(_axis("L2 norm (log)", log=True) if log_norms else _axis("L2 norm"), norms, log=log_norms)
    return {
        "verdict": _spec("bar", labels, [verdict], {"x": x, "y": {"display": False, "max": 1}},
                         height=120, plugins={"legend": {"display": False}}),
        "norm": _spec("line", labels, [norm], {"x": x, "y": norm_axis}, units={"y": "sci"}, height=240),
        "memory": _spec("line", labels, [peak, activations], {"x": x, "y": _axis("bytes", beginAtZero=True)},
                        units={"y": "bytes"}, height=240),
        "time": _spec("line", labels, [check_s], {"x": x, "y": _axis("seconds", beginAtZero=True)},
                      units={"y": "secs"}, height=240),
    }


def compare_flow(comparison: Mapping[str, Any]) -> ChartSpec | None:
    """Both runs' backward-signal norms by layer on one log axis."""
    layers = (comparison.get("gradient_norms") or {}).get("layers") or []
    if not layers:
        return None
    labels = [layer_label(layer) for layer in layers]
    datasets = [
        {"label": f"run A ({comparison['a']['id'][:8]})", "data": [_positive(layer.get("a")) for layer in layers],
         "borderColor": GREY, "borderDash": [5, 3], "spanGaps": True},
        {"label": f"run B ({comparison['b']['id'][:8]})", "data": [_positive(layer.get("b")) for layer in layers],
         "borderColor": BLUE, "spanGaps": True},
    ]
    return _spec("line", labels, datasets, {"x": _axis("layer depth (forward order)"),
                                            "y": _axis("backward-signal L2 norm (log)", log=True)},
                 units={"y": "sci"})
