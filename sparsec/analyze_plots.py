"""`sparsec analyze`'s pictures, drawn by matplotlib on its Agg canvas into PNG bytes.

matplotlib is imported here only, on first use, so that `import sparsec` and the other
commands never load it. Names from the model (untrusted) reach a picture only as tick labels,
their `$` escaped so that matplotlib's mathtext never parses a name.
"""

from __future__ import annotations

import io

import numpy as np

from sparsec.errors import SparsecError

DPI = 96
CHOSEN, OTHER, DENSE = "#d95f02", "#7570b3", "#999999"


def _matplotlib():
    try:
        import matplotlib
        import matplotlib.ticker
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise SparsecError(f"sparsec analyze draws its charts with matplotlib, which is not "
                           f"installed: pip install matplotlib ({error})") from None
    return matplotlib, Figure, FigureCanvasAgg


def _figure(width: float, height: float, layout: str | None = "constrained"):
    """layout=None for the per-layer small multiples: constrained layout cost 0.5 s a figure,
    and a large model has a hundred of them (their margins are set by hand instead)."""
    _, figure_class, canvas_class = _matplotlib()
    figure = figure_class(figsize=(width, height), dpi=DPI, layout=layout)
    canvas_class(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _label(name: str, width: int = 48) -> str:
    """A layer's name as a tick label: its end (where the names differ), each `$` escaped, so
    that a layer named `$\\frac{$` is drawn as it is, not parsed as TeX (and never fails)."""
    name = name or "?"
    name = name if len(name) <= width else "..." + name[-(width - 3):]
    return name.replace("$", r"\$")


def sparsity_pictures(shape: tuple[int, int], grids: dict[str, np.ndarray]) -> bytes:
    """The weight's density, cell by cell (darker: more nonzeros), as the model had it and, if
    reorder_blocks permuted its channels, as the library stores it."""
    panels = [(key, title) for key, title in (("before", "model's channel order"),
                                              ("after", "as stored (reordered)"
                                               if "before" in grids else "as stored"))
              if key in grids]
    figure = _figure(3.3 * len(panels) + 0.6, 3.0)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    k, n = shape
    image = None
    for ax, (key, title) in zip(axes, panels):
        image = ax.imshow(grids[key], cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto",
                          interpolation="nearest", extent=(0, n, k, 0))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"output column (N = {n})", fontsize=8)
        ax.set_ylabel(f"input row (K = {k})", fontsize=8)
        ax.tick_params(labelsize=7)
    cells = grids["after"].shape
    figure.colorbar(image, ax=list(axes), shrink=0.8,
                    label=f"nonzero share per cell ({-(-k // cells[0])}x{-(-n // cells[1])})")
    return _png(figure)


def fill_histograms(candidates: dict[str, dict], chosen: str) -> bytes | None:
    """For each candidate block shape RxC: how many of its nonzero blocks hold 1, 2, ..., R*C
    nonzeros. The chosen pattern's bars are orange. 1x1 (every block full) is left out."""
    shapes = [p for p, c in candidates.items() if "fill_histogram" in c and p != "1x1"]
    if not shapes:
        return None
    columns = len(shapes) if len(shapes) <= 6 else 4
    rows = -(-len(shapes) // columns)
    height = 1.9 * rows + 0.3
    figure = _figure(2.2 * columns, height, layout=None)
    figure.subplots_adjust(left=0.09, right=0.98, bottom=0.45 / height, top=1 - 0.3 / height,
                           wspace=0.35, hspace=0.75 / 1.9 * 2)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, pattern in zip(axes, shapes):
        counts = np.asarray(candidates[pattern]["fill_histogram"])
        size = len(counts)
        ax.bar(np.arange(1, size + 1) / size, counts, width=0.8 / size,
               color=CHOSEN if pattern == chosen else OTHER)
        fill = candidates[pattern]["fill"]
        ax.set_title(f"{pattern}{' (chosen)' if pattern == chosen else ''}: "
                     f"{candidates[pattern]['nonzero_blocks']} blocks, fill {fill:.0%}",
                     fontsize=8, fontweight="bold" if pattern == chosen else "normal")
        ax.set_xlim(0, 1.05)
        ax.set_xlabel("block fill", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in axes[len(shapes):]:
        ax.set_visible(False)
    return _png(figure)


def operator_chart(operators: list[dict], measured: bool) -> bytes | None:
    """Milliseconds per run by operator kind: both builds' where measured, else the cost
    model's prediction for the matrix layers."""
    key = "measured_ms" if measured else "predicted_ms"
    rows = [op for op in operators if op.get(key)]
    if not rows:
        return None
    rows = rows[::-1]  # slowest at the top
    figure = _figure(7.0, 0.35 * len(rows) + 1.2)
    ax = figure.subplots()
    y = np.arange(len(rows))
    labels = [f"{op['op']} ({op['layers']})" for op in rows]
    if measured:
        ax.barh(y + 0.2, [op["measured_ms"] for op in rows], height=0.4, color=CHOSEN,
                label="as compiled")
        ax.barh(y - 0.2, [op["measured_dense_ms"] for op in rows], height=0.4, color=DENSE,
                label="every weight dense")
        ax.legend(fontsize=8)
        ax.set_xlabel("measured ms per run (sum over the operator's layers)", fontsize=8)
    else:
        ax.barh(y, [op["predicted_ms"] for op in rows], height=0.6, color=CHOSEN)
        ax.set_xlabel("predicted ms per run, 1 thread (matrix layers only)", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    return _png(figure)


def predicted_against_measured(layers: list[dict]) -> bytes | None:
    """Each matrix layer's predicted time against its measured one, on log axes: points on
    the diagonal are layers the cost model priced right."""
    points = [(layer["predicted_ms"], layer["measured_ms"]) for layer in layers
              if layer.get("predicted_ms") and layer.get("measured_ms")]
    if not points:
        return None
    predicted, measured = (np.asarray(values) for values in zip(*points))
    figure = _figure(4.6, 4.0)
    ticker = _matplotlib()[0].ticker
    ax = figure.subplots()
    ax.scatter(predicted * 1e3, measured * 1e3, s=18, color=CHOSEN)
    low = min(predicted.min(), measured.min()) * 1e3 / 1.5
    high = max(predicted.max(), measured.max()) * 1e3 * 1.5
    ax.plot([low, high], [low, high], color=DENSE, linewidth=1, label="measured = predicted")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # labels at the decades only: the others overlap
        axis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel("predicted µs per run (cost model, 1 thread)", fontsize=8)
    ax.set_ylabel("measured µs per run", fontsize=8)
    ax.legend(fontsize=8)
    ax.tick_params(labelsize=7)
    return _png(figure)


def prune_chart(candidates: list[dict]) -> bytes | None:
    """Time per nonzero weight of the layers that spend the most on each."""
    if not candidates:
        return None
    rows = candidates[::-1]
    figure = _figure(7.0, 0.32 * len(rows) + 1.1)
    ax = figure.subplots()
    y = np.arange(len(rows))
    ax.barh(y, [layer["ns_per_nonzero"] for layer in rows], height=0.6, color=OTHER)
    ax.set_yticks(y, [_label(layer["node"]) for layer in rows], fontsize=7)
    measured = any(layer["measured"] for layer in rows)
    ax.set_xlabel(f"{'measured' if measured else 'predicted'} ns per run per nonzero weight",
                  fontsize=8)
    return _png(figure)
