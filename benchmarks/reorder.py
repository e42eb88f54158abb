"""Evidence for block reordering: nonzero blocks and latency with and without it.

    python benchmarks/reorder.py [MODEL.onnx ...] [--target native]

Default models: benchmarks/models/minilm-unstructured-{80,90}.onnx (benchmarks/export_encoders.py
writes them). For each model:
- blocks: over every chain the reorder-blocks pass finds, the nonzero 4x1 blocks of the
  consumers (rows grouped in fours) and the 1x16 blocks of the producers (columns grouped in
  sixteens), in the original channel order and after the pass's search for that block shape
  (its greedy grouping and swap search, run here for each shape whether or not the cost model
  then applies it);
- latency: sparsec compiled with and without the pass (what the cost model chose to apply),
  1 thread, measured in alternating rounds, with onnxruntime on the same file as reference,
  and the largest difference between the two sparsec outputs.
Writes benchmarks/results/reorder-TARGET.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds, ort_session, unset_openblas_overrides, write_table

unset_openblas_overrides()

import numpy as np
import onnx
from e2e import make_inputs

import sparsec
from sparsec.codegen import targets
from sparsec.compiler import frontend
from sparsec.compiler.channel_groups import search
from sparsec.compiler.passes import detect_sparsity, fuse, reorder_blocks
from sparsec.compiler.passes.reorder_blocks import find_chains
from sparsec.compiler.patterns import Pattern

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "benchmarks" / "models"


def block_search(path: str, ctx) -> dict:
    """Blocks before and after the pass's search, summed over the model's chains."""
    graph = fuse.run(detect_sparsity.run(frontend.import_model(path), ctx), ctx)
    totals = {"4x1 consumer": [0, 0], "1x16 producer": [0, 0]}
    rng = np.random.default_rng(reorder_blocks.SEED)
    chains = find_chains(graph)
    for chain in chains:
        w1 = graph.tensors[chain.producer.inputs[1]].data
        w2 = graph.tensors[chain.consumer.inputs[1]].data
        per_group = w1.shape[1] // chain.groups
        for key, group, weight, features, permute in (
                ("4x1 consumer", 4, w2, w2 != 0, lambda w, p: w[p, :]),
                ("1x16 producer", 16, w1, (w1 != 0).T, lambda w, p: w[:, p])):
            if per_group % group:
                continue
            pattern = Pattern("4x1" if key.startswith("4x1") else "1x16")
            perm = search(features, group, chain.groups, rng, reorder_blocks.SWAPS_PER_CHAIN)
            totals[key][0] += pattern.count(weight)[0]
            totals[key][1] += pattern.count(permute(weight, perm))[0]
    return {"chains": len(chains), **totals}


def paired(runs: list, rounds: int = 3) -> list[float]:
    times = [[] for _ in runs]
    for _ in range(rounds):
        for index, run in enumerate(runs):
            times[index].append(1e3 * median_seconds(run))
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=[
        str(MODELS / f"minilm-unstructured-{p}.onnx") for p in (80, 90)])
    parser.add_argument("--target", default="native")
    args = parser.parse_args()
    target = targets.resolve(args.target)
    from sparsec.codegen.costs import cost_model
    from sparsec.compiler.passes import PassContext

    ctx = PassContext(cost=cost_model(target))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.models:
            if not Path(path).is_file():
                raise SystemExit(f"{path} is missing: run benchmarks/export_encoders.py first")
            blocks = block_search(path, ctx)
            model = onnx.load(path)
            feeds = make_inputs(model, np.random.default_rng(0))
            libraries, applied = {}, 0
            for reorder in (False, True):
                result = sparsec.compile_model(path, target.name,
                                               Path(tmp) / f"{Path(path).stem}-{reorder}.so",
                                               reorder=reorder, use_cache=False)
                libraries[reorder] = result.library
                if reorder:
                    applied = sum("permutation" in n.attrs.get("reorder", {})
                                  for n in result.graph.nodes) // 2
            session = ort_session(model.SerializeToString(), 1)
            modules = {r: sparsec.load(lib, threads=1) for r, lib in libraries.items()}
            outputs = {r: list(m.run(feeds).values())[0] for r, m in modules.items()}
            ort_ms, plain_ms, reordered_ms = paired([
                lambda: session.run(None, feeds), lambda: modules[False].run(feeds),
                lambda: modules[True].run(feeds)])
            for module in modules.values():
                module.close()
            row = [Path(path).name, str(blocks["chains"]), str(applied)]
            for key in ("4x1 consumer", "1x16 producer"):
                before, after = blocks[key]
                row += [f"{before} -> {after}", f"{100 * (1 - after / before):.1f}%"]
            row += [f"{ort_ms:.3f}", f"{plain_ms:.3f}", f"{reordered_ms:.3f}",
                    f"{plain_ms / reordered_ms:.2f}x",
                    f"{np.max(np.abs(outputs[True] - outputs[False])):.2e}"]
            rows.append(row)
            print(row, flush=True)
    path = write_table(
        f"reorder-{target.name}", f"Block reordering, target {target.name}",
        ["model", "chains", "permuted", "4x1 blocks (consumers)", "fewer",
         "1x16 blocks (producers)", "fewer", "ORT ms", "sparsec ms, no reorder",
         "sparsec ms, reorder", "speed-up", "max abs diff"], rows,
        "Blocks: summed over the chains, original order -> after the search for that block "
        "shape. Latency: 1 thread, medians of alternating rounds; 'permuted' counts the chains "
        "where the cost model predicted a gain and the pass applied the permutation.")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
