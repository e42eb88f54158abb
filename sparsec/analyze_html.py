"""`sparsec analyze`'s page: one self-contained HTML file (charts as base64 PNG data URIs, the
style inline, no script) rendered from analyze.py's data by analyze.html.j2.

Model files are untrusted: every name from one goes through Jinja2's autoescaping, and the
page's Content-Security-Policy forbids scripts and anything loaded from elsewhere.
"""

from __future__ import annotations

import base64
from importlib import resources

from sparsec import analyze_plots
from sparsec.analyze import Analysis


def _data_uri(png: bytes | None) -> str | None:
    return f"data:image/png;base64,{base64.b64encode(png).decode('ascii')}" if png else None


def _size(count: float | None) -> str:
    """1234567 -> '1.23 M'."""
    if count is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count:.3g}"


def _bytes(count: int | None) -> str:
    if count is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count} B"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.3g} µs" if value < 0.1 else f"{value:.3g} ms"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render(analysis: Analysis) -> str:
    import jinja2

    data = analysis.data
    measured = data["measurement"] is not None
    layers = []
    for index, layer in enumerate(data["matrix_layers"]):
        pictures = analysis.pictures.get(index, {})
        layers.append(dict(
            layer, index=index,
            sparsity_png=_data_uri(analyze_plots.sparsity_pictures(tuple(layer["shape"]),
                                                                   pictures))
            if pictures else None,
            histogram_png=_data_uri(analyze_plots.fill_histograms(layer["candidates"],
                                                                  layer["pattern"]))))
    charts = {
        "operators": _data_uri(analyze_plots.operator_chart(data["operators"], measured)),
        "predicted": _data_uri(analyze_plots.predicted_against_measured(data["matrix_layers"]))
        if measured else None,
        "prune": _data_uri(analyze_plots.prune_chart(data["prune_candidates"])),
    }
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(size=_size, bytes=_bytes, ms=_ms, ratio=_ratio)
    template = env.from_string(
        resources.files("sparsec").joinpath("analyze.html.j2").read_text(encoding="utf-8"))
    return template.render(data=data, summary=data["summary"], layers=layers, charts=charts,
                           measured=measured)
