"""CNNs (issue 23): sparsec against onnxruntime and DeepSparse 1.8, 224x224 images, batch 1.

    python benchmarks/cnn.py [--targets native,x86-avx2] [--threads 1,2] [--no-deepsparse]
        [--quick]

Models (tests/cnn_models.py: seeded random weights, BatchNorm calibrated, magnitude-pruned;
exported with the TorchScript exporter, opset 17, which DeepSparse 1.8 reads; cached in
benchmarks/models/cnn/): ResNet-50 dense and 90 % unstructured in every conv but the stem,
MobileNet-v1 dense and 90 % unstructured in its 1x1 convs, MobileNet-v2 90 % in its 1x1 convs.
For each target (default: native, and on an AVX-512 host x86-avx2 as well): median latency of
onnxruntime, sparsec and DeepSparse on 1 and 2 threads, measured in alternating rounds, and the
ratios; a model sparsec does not compile yet gets "refused" and the reason is printed and noted
under the table. Writes benchmarks/results/cnn-TARGET.md.

--quick: a smoke test of the harness: the same nets at width 0.25 and 64x64, one round, the
table written to build/benchmarks/ (its numbers are not the 224x224 nets' and must not land
in results/).
"""

from __future__ import annotations

import argparse
import functools
import re
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from common import ort_session, unset_openblas_overrides, write_table
from deepsparse_peer import Peer
from e2e import CompileFailed, compile_in_child, default_targets, median_ratio, paired_rounds

unset_openblas_overrides()

import numpy as np

sys.path.insert(0, str(ROOT))
import sparsec
from sparsec.codegen import targets
from tests import cnn_models
from tests.cnn_models import MOBILENET_V1, MOBILENET_V2, RESNET50, Pruning

MODELS = {
    "resnet50-dense": RESNET50,
    "resnet50-unstructured-90": replace(RESNET50, pruning=Pruning(0.1, "all-but-stem")),
    "mobilenet-v1-dense": MOBILENET_V1,
    "mobilenet-v1-pointwise-90": replace(MOBILENET_V1, pruning=Pruning(0.1, "pointwise")),
    "mobilenet-v2-pointwise-90": replace(MOBILENET_V2, pruning=Pruning(0.1, "pointwise")),
}
EXPORTER = "torchscript"  # DeepSparse 1.8 cannot read the dynamo exporter's IR 10
CACHE = HERE / "models" / "cnn"
QUICK = dict(width=0.25, resolution=64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", help="comma-separated (default: native, and x86-avx2 "
                        "where native is AVX-512); one table each")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--no-deepsparse", action="store_true",
                        help="leave DeepSparse out (else benchmarks/deepsparse_peer.py "
                             "--install must have made its environment)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: small nets, one round, table under build/benchmarks")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds per model (this VM's speed comes in bursts)")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    names = (args.targets or ",".join(default_targets())).split(",")
    thread_counts = [int(t) for t in args.threads.split(",")]
    specs = {name: replace(spec, **QUICK) if args.quick else spec
             for name, spec in MODELS.items()}
    paths = {}
    for name, spec in specs.items():
        paths[name] = cnn_models.export(spec, EXPORTER, CACHE)
        print(f"{name}: {paths[name].name}", flush=True)
    for name in names:
        target = targets.resolve(name)
        rows, refusals = table(target, specs, paths, thread_counts, not args.no_deepsparse,
                               rounds=rounds)
        header = ["model"]
        for threads in thread_counts:
            plural = "thread" if threads == 1 else "threads"
            header += [f"ORT ms ({threads} {plural})", f"sparsec ms ({threads} {plural})",
                       "ratio"]
            if not args.no_deepsparse:
                header += [f"DeepSparse ms ({threads} {plural})", "ratio to DeepSparse"]
        header += ["max abs diff vs ORT", "compile s", "compile peak MB"]
        size = (f"width {QUICK['width']}, {QUICK['resolution']}x{QUICK['resolution']} "
                "(--quick: a smoke test, not the 224x224 nets)" if args.quick else "224x224")
        notes = (f"Batch 1, {size}, TorchScript exports (opset 17). Medians; ratio = onnxruntime "
                 "time / sparsec time, ratio to DeepSparse = DeepSparse time / sparsec time, same "
                 f"run, same model file, measured in alternation, {rounds} "
                 "round(s) each; a ratio is the median of the rounds' own ratios."
                 + (" DeepSparse 1.8 runs in its own venv in a child process (NM_ARCH=avx2 on "
                    "x86-avx2 tables)." if not args.no_deepsparse else "")
                 + "".join(f" {model}: sparsec refused: {reason}"
                           for model, reason in refusals.items()))
        path = write_table(f"cnn-{target.name}", f"CNNs, target {target.name}", header, rows,
                           notes, ROOT / "build" / "benchmarks" if args.quick else
                           HERE / "results")
        print(f"wrote {path}")


def refusal_summary(failure: CompileFailed) -> str:
    """What sparsec said, without the model's path and, for refused operators, up to the
    operator counts: `N node(s) use operators sparsec cannot compile (Conv x53, ...)` (the
    rest names nodes and lists every supported operator)."""
    text = str(failure)
    text = text[text.find("sparsec: error:"):] if "sparsec: error:" in text else text
    summary = re.match(r"sparsec: error: .*? cannot compile \([^)]*\)", text)
    return summary.group(0) if summary else text.splitlines()[0][:300]


def table(target, specs: dict, paths: dict, thread_counts: list[int], deepsparse: bool,
          rounds: int) -> tuple[list[list], dict[str, str]]:
    rows, refusals = [], {}
    arch = "avx2" if target.name == "x86-avx2" else None
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in specs.items():
            path = str(paths[name])
            model_bytes = Path(path).read_bytes()
            feeds = cnn_models.inputs(spec)
            reference = ort_session(model_bytes, 1).run(None, feeds)[0]
            library = Path(tmp) / f"{name}.so"
            try:
                compile_s, peak_mb = compile_in_child(path, target.name, library, "fp32")
            except CompileFailed as failure:
                refusals[name] = refusal_summary(failure)
                print(f"{name}: sparsec refused ({target.name}): {refusals[name]}", flush=True)
                library = None
            row = [name]
            for threads in thread_counts:
                ort_run = functools.partial(ort_session(model_bytes, threads).run, None, feeds)
                peer = Peer(path, feeds, cores=threads, arch=arch) if deepsparse else None
                module = sparsec.load(library, threads=threads) if library else None
                runs = [ort_run] + ([lambda: module.run(feeds)] if module else []) \
                    + ([peer] if peer else [])
                times = paired_rounds(*runs, rounds=rounds)
                ort_times = times.pop(0)
                sparsec_times = times.pop(0) if module else None
                ort_ms = statistics.median(ort_times)
                sparsec_ms = statistics.median(sparsec_times) if module else None
                if module:
                    output = list(module.run(feeds).values())[0]
                    module.close()
                if peer:
                    peer.close()
                del ort_run  # the session's spinning threads must not share the cores
                row += [f"{ort_ms:.3f}"] + (
                    [f"{sparsec_ms:.3f}", f"{median_ratio(ort_times, sparsec_times):.2f}x"]
                    if module else ["refused", "-"])
                if peer:
                    peer_times = times.pop(0)
                    row += [f"{statistics.median(peer_times):.3f}",
                            f"{median_ratio(peer_times, sparsec_times):.2f}x" if module else "-"]
            row += ([f"{np.max(np.abs(output - reference)):.2e}", f"{compile_s:.1f}",
                     f"{peak_mb:.0f}"] if library else ["-", "-", "-"])
            rows.append(row)
            print(rows[-1], flush=True)
    return rows, refusals


if __name__ == "__main__":
    main()
