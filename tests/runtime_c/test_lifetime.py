"""Long-lived use: 10,000 runs of one module, and 1,000 load/run/close cycles, leave the
process's resident memory where it was after warming up. Each measurement runs in a fresh
Python process, so that nothing else the test session did moves its RSS.

The bound, 2 MiB, catches a leak of 200 bytes a run or 2 KiB a cycle; a library with a
planted 4 KiB leak per run must fail it (the negative control), or the measurement proves
nothing. Thread pools are in play: every module runs on two threads.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import HOST_TARGETS
from tests.faults import patched_library
from tests.graphs import mlp

RUNS = 10_000
CYCLES = 1_000
GROWTH_LIMIT = 2 << 20

MEASURE = r"""
import json, os, sys
import numpy as np
import sparsec

path, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
page = os.sysconf("SC_PAGE_SIZE")

def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * page

def cycle(module=None):
    own = module is None
    module = module or sparsec.load(path, threads=2)
    feeds = {spec.name: np.ones(spec.shape, spec.dtype) for spec in module.inputs}
    outputs = module.run(feeds)
    if own:
        module.close()
    return outputs

module = sparsec.load(path, threads=2) if mode == "runs" else None
for _ in range(max(count // 10, 50)):  # warm up: allocator pools, thread stacks, lazy binding
    cycle(module)
before = rss()
for _ in range(count):
    cycle(module)
after = rss()
print(json.dumps({"before": before, "after": after}))
"""


def growth(library, mode: str, count: int) -> int:
    done = subprocess.run([sys.executable, "-c", MEASURE, str(library), mode, str(count)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    sample = json.loads(done.stdout.splitlines()[-1])
    return sample["after"] - sample["before"]


@pytest.mark.parametrize("target", HOST_TARGETS)
@pytest.mark.parametrize("mode,count", [("runs", RUNS), ("cycles", CYCLES)])
def test_memory_stays_flat(target, mode, count, compiler):
    library = compiler.compile(mlp(k=64, n=96, m=16, density=0.2), target).library
    grew = growth(library, mode, count)
    assert grew < GROWTH_LIMIT, f"resident memory grew {grew / 2**20:.1f} MiB over {count} {mode}"


def test_a_planted_leak_is_caught(compiler, tmp_path):
    """The same measurement on a library that leaks 4 KiB a run fails the bound."""
    compiler.compile(mlp(k=64, n=96, m=16, density=0.2), "generic", keep_source=tmp_path / "src")
    leaking = patched_library(
        tmp_path / "src", "{ unsigned char *volatile lost = malloc(4096); "
        "for (int i = 0; i < 4096; i += 64) lost[i] = 1; lost = NULL; }", tmp_path / "leaky")
    assert growth(leaking, "runs", RUNS) > 10 * GROWTH_LIMIT
