"""Text reports of a compiled library for the command line: its layers and a profile."""

from __future__ import annotations


def format_profile(layers: list[dict], runs: int, top: int = 15) -> str:
    """Time per operator kind, then the slowest layers; milliseconds per run."""
    total = sum(layer["ms"] for layer in layers) / runs
    by_op: dict[str, list[float]] = {}
    for layer in layers:
        by_op.setdefault(layer["op"], []).append(layer["ms"] / runs)
    lines = [f"{total:.3f} ms per run in {len(layers)} layers", "",
             f"{'op':<20} {'layers':>6} {'ms':>9} {'share':>6}"]
    for op, times in sorted(by_op.items(), key=lambda item: -sum(item[1])):
        lines.append(f"{op:<20} {len(times):>6} {sum(times):>9.3f} "
                     f"{100 * sum(times) / total if total else 0:>5.1f}%")
    lines += ["", f"{'slowest layers':<56} {'kernel':<28} {'ms':>8}"]
    for layer in sorted(layers, key=lambda layer: -layer["ms"])[:top]:
        lines.append(f"{(layer['node'] or '?')[-56:]:<56} {layer['kernel'][:28]:<28} "
                     f"{layer['ms'] / runs:>8.3f}")
    return "\n".join(lines)


def _portable_note(layer: dict) -> str:
    return f"PORTABLE C: {layer['portable']}; " if "portable" in layer else ""


def _reorder_note(layer: dict) -> str:
    reorder = layer.get("reorder")
    return f"; reorder ({reorder['kind']}): {reorder['result']}" if reorder else ""


def _layout_note(layer: dict) -> str:
    transposed = [side for side, layout in layer.get("layouts", {}).items()
                  if layout != "row-major"]
    return f"; {' and '.join(transposed)} {'is' if len(transposed) == 1 else 'are'} " \
        "feature-major (no transpose between token-tile kernels)" if transposed else ""


def format_layers(info: dict) -> str:
    rows = [("layer", "weight K x N", "dtype", "density", "pattern", "kernel", "why")]
    for layer in info["layers"]:
        if "shape" not in layer and "portable" not in layer:
            continue
        rows.append((layer["node"] or "?", "x".join(map(str, layer.get("shape", ["-"]))),
                     layer.get("weight_dtype", "float32"),
                     f"{layer['density']:.3f}" if "density" in layer else "-",
                     layer.get("pattern", "dense" if "shape" in layer else "-"),
                     layer["kernel"],
                     _portable_note(layer) + layer.get("reason", "") + _layout_note(layer)
                     + _reorder_note(layer)))
    notes = [layer["unfused"] for layer in info["layers"] if "unfused" in layer]
    if len(rows) == 1:
        return "\n".join(["no matrix layers", *notes])
    widths = [max(len(str(r[i])) for r in rows) for i in range(6)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r[:6], widths)) + "  " + r[6]
             for r in rows]
    return "\n".join(lines + notes)


def describe_tensors(tensors: list[dict]) -> str:
    return "\n".join(f"  {t['name']!r}: {t['dtype']}[{'x'.join(map(str, t['shape']))}]"
                     for t in tensors)
