"""Bit-for-bit equivalence of compiled libraries' outputs across a change to the compiler.

    python tests/equivalence.py record DIR [--quick]   # before: outputs, manifest, model.c
    python tests/equivalence.py compare DIR            # after: recompile, report differences

Compiles the samples, about thirty seeded models built with the test suite's builders and,
where present, the pruned MiniLMs (tests/equivalence_cases.py), for every target this host
runs (natively, the x86-amx emulation build, ARM under qemu), with several option sets
(default, int8, bf16, forced patterns, layouts off, buckets), runs each library on seeded
inputs and keeps the outputs. `compare` recompiles everything with the code checked out now
and exits 1 if any output differs in any bit, or a case compiled before and fails now (or
the other way round). Whether model.c changed is printed too, for information: a refactor
may change the C and keep the outputs.

No build cache (use_cache=False), no host profile (kernels chosen by the kernel table's
costs, as the tests do), so nothing but the compiler's code decides what is built. Each
library runs on 1 thread and again on 2; the README promises the same bits whatever the
thread count, so a difference between the two is reported as a defect of its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

# Run as a script (python tests/equivalence.py): the repository root must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# Kernels chosen by the kernel table, as in the tests: never by a profile `sparsec calibrate`
# left in the developer's cache.
os.environ["SPARSEC_PROFILE_DIR"] = tempfile.mkdtemp(prefix="sparsec-equivalence-profiles-")

import sparsec  # noqa: E402
from sparsec import emulation, inputs  # noqa: E402
from sparsec.codegen import build, targets  # noqa: E402
from sparsec.errors import PortableKernelWarning  # noqa: E402
from tests import equivalence_cases  # noqa: E402
from tests.equivalence_cases import MODELS, Case  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def outputs_of(case: Case, built, info: dict, library: Path) -> dict[str, np.ndarray]:
    """The library's outputs on the case's seeded inputs, each run at 1 and at 2 threads;
    raises if the two differ in any bit."""
    target = targets.resolve(case.target)
    if built.feeds is None:
        rng = np.random.default_rng(zlib.crc32(case.model.encode()))
        feeds = {record["name"]: inputs.generate(record, rng)[0] for record in info["inputs"]}
    else:
        feeds = built.feeds(info)
    runs = ({f"len{n}/": feeds[n] for n in built.lengths} if built.lengths else {"": feeds})
    found = {}
    for prefix, run_feeds in runs.items():
        by_threads = []
        for threads in (1, 2):
            if targets.execution_mode(target) == "emulated" and not case.emulate:
                by_threads.append(emulation.run(library, target, info, run_feeds, threads))
            else:
                by_threads.append(sparsec.load(library, threads=threads).run(run_feeds))
        one, two = by_threads
        for name, value in one.items():
            if value.tobytes() != two[name].tobytes():
                raise AssertionError(f"output {prefix}{name} differs between 1 and 2 threads")
            found[prefix + name] = np.ascontiguousarray(value)
    return found


def run_case(case: Case, work: Path, source_root: Path) -> dict:
    """Compile and run one case; its record (outputs' hashes, model.c's) and its outputs."""
    started = time.perf_counter()
    folder = work / case.name
    source = source_root / case.name
    record: dict = {}
    try:
        built = MODELS[case.model]()
        folder.mkdir(parents=True, exist_ok=True)
        result = sparsec.compile_model(built.model, case.target, folder / "model.so",
                                       use_cache=False, host_profile=False,
                                       emulate=case.emulate, keep_source=source, **case.options)
        weights = source / "weights.bin"
        record["weights_sha256"] = sha256(weights.read_bytes())
        weights.unlink()  # MiniLM's are 20-90 MB; the hash says whether they changed
        # model.c's, and a large model's unit files' after it (the key predates them)
        record["model_c_sha256"] = sha256(b"".join(
            (source / name).read_bytes() for name in build.model_sources(
                len(list(source.glob("unit-*.c"))))))
        outputs = outputs_of(case, built, result.info, result.library)
        record["outputs"] = {name: {"sha256": sha256(value.tobytes()), "dtype": str(value.dtype),
                                    "shape": list(value.shape)} for name, value in outputs.items()}
        record["status"] = "ok"
    except Exception as exc:  # a case that fails is a result to record, not a reason to stop
        outputs = {}
        record["status"] = "failed"
        record["error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    record["seconds"] = round(time.perf_counter() - started, 1)
    return {"name": case.name, "record": record, "outputs": outputs}


def run_all(case_list: list[Case], out: Path, jobs: int) -> dict[str, dict]:
    """Every case's record; outputs saved as out/outputs/CASE.npz, sources in out/source/."""
    for sub in ("outputs", "source", "work"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True)
    records = {}
    started = time.perf_counter()
    # fork: workers inherit the model table, MiniLMs included, rather than rebuilding it
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork")
                             ) as pool:
        futures = [pool.submit(run_case, case, out / "work", out / "source") for case in case_list]
        for index, future in enumerate(futures, start=1):
            done = future.result()
            record = done["record"]
            if done["outputs"]:
                np.savez(out / "outputs" / f"{done['name']}.npz", **done["outputs"])
            records[done["name"]] = record
            status = record["status"] if record["status"] == "ok" else \
                f"FAILED: {record['error'].splitlines()[-1]}"
            print(f"[{index}/{len(futures)}] {done['name']}: {status} ({record['seconds']} s)",
                  flush=True)
    shutil.rmtree(out / "work", ignore_errors=True)
    print(f"{len(records)} cases in {time.perf_counter() - started:.0f} s", flush=True)
    return records


def describe_host() -> dict:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                            "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return {"commit": commit + ("+uncommitted changes" if dirty else ""),
            "arch": targets.host_arch(), "features": sorted(targets.host_features()),
            "compiler": subprocess.run(["cc", "--version"], capture_output=True, text=True,
                                       check=False).stdout.splitlines()[:1],
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def case_list(args, quick: bool, arm: bool) -> list[Case]:
    minilms = equivalence_cases.add_minilms(Path(args.models_dir), print)
    return equivalence_cases.cases(quick, arm, minilms)


def record(args) -> int:
    out = Path(args.dir)
    found = case_list(args, args.quick, not args.no_arm)
    print(f"recording {len(found)} cases into {out}", flush=True)
    host = describe_host()  # the code that compiles: before anyone edits the tree meanwhile
    records = run_all(found, out, args.jobs)
    manifest = {"host": host, "quick": args.quick, "arm": not args.no_arm,
                "cases": records}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    failed = [name for name, r in records.items() if r["status"] != "ok"]
    for name in failed:
        print(f"recorded as failing: {name}: {records[name]['error']}")
    return 0


def difference(before: np.ndarray, after: np.ndarray) -> str:
    if before.shape != after.shape or before.dtype != after.dtype:
        return f"was {before.dtype}{list(before.shape)}, now {after.dtype}{list(after.shape)}"
    bits = f"u{before.dtype.itemsize}"  # compared as bits: NaN == NaN, -0.0 != 0.0
    changed = before.view(bits) != after.view(bits)
    gap = np.abs(before.astype(np.float64) - after.astype(np.float64))[changed]
    gap = gap[~np.isnan(gap)]
    largest = f"{gap.max():.3g}" if gap.size else "none (only NaNs or signed zeros moved)"
    return f"{int(changed.sum())} of {before.size} elements differ, max abs diff {largest}"


def compare(args) -> int:
    base = Path(args.dir)
    manifest = json.loads((base / "manifest.json").read_text())
    print(f"baseline: {manifest['host']['commit']} ({manifest['host']['date']}); "
          f"now: {describe_host()['commit']}", flush=True)
    found = case_list(args, manifest["quick"], manifest["arm"])
    now_dir = base / "compare"
    records = run_all(found, now_dir, args.jobs)
    before_cases = manifest["cases"]
    problems, c_changed = [], []
    for name in sorted(set(before_cases) | set(records)):
        before, after = before_cases.get(name), records.get(name)
        if before is None or after is None:
            problems.append(f"{name}: {'not in the baseline' if before is None else 'not run now'}")
            continue
        if before["status"] != after["status"]:
            problems.append(f"{name}: was {before['status']}, now {after['status']}"
                            + (f": {after['error']}" if after["status"] != "ok" else ""))
            continue
        if after["status"] != "ok":
            if before["error"] != after["error"]:
                print(f"{name}: fails as before, with another message: {after['error']}")
            continue
        if before["model_c_sha256"] != after["model_c_sha256"]:
            c_changed.append(name)
        if before["outputs"] == after["outputs"]:
            continue
        was = np.load(base / "outputs" / f"{name}.npz")
        now = np.load(now_dir / "outputs" / f"{name}.npz")
        for output in sorted(set(before["outputs"]) | set(after["outputs"])):
            if before["outputs"].get(output) == after["outputs"].get(output):
                continue
            if output not in was or output not in now:
                problems.append(f"{name}: output {output} "
                                f"{'is new' if output not in was else 'is gone'}")
            else:
                problems.append(f"{name}: output {output}: {difference(was[output], now[output])}")
    for name in c_changed:
        print(f"model.c differs (information): {name}")
    print(f"model.c differs in {len(c_changed)} of {len(records)} cases "
          f"(diff -r {base / 'source'} {now_dir / 'source'})")
    for line in problems:
        print(f"DIFFERS: {line}")
    print(f"{len(problems)} differences" if problems else
          f"all {len(records)} cases identical, bit for bit")
    return 1 if problems else 0


def main(argv=None) -> int:
    # Expected noise: onnxruntime's quantize_dynamic advises pre-processing, and forced
    # patterns without a SIMD kernel warn that they run portable C.
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=PortableKernelWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["record", "compare"])
    parser.add_argument("dir", help="where the baseline is (compare) or goes (record)")
    parser.add_argument("--quick", action="store_true",
                        help="record: a subset (samples, a third of the drawn models, no ARM, "
                             "no MiniLM); compare follows what the baseline recorded")
    parser.add_argument("--no-arm", action="store_true", help="record: skip the qemu targets")
    parser.add_argument("--jobs", type=int, default=2, help="cases compiled at once (2)")
    parser.add_argument("--models-dir", default=str(ROOT / "benchmarks" / "models"),
                        help="where the MiniLMs are (benchmarks/models)")
    args = parser.parse_args(argv)
    return record(args) if args.command == "record" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
