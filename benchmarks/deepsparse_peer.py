"""DeepSparse 1.8 as a peer in the benchmarks, from a virtual environment of its own.

    python benchmarks/deepsparse_peer.py --install     # benchmarks/.venv-deepsparse (~1 min)

deepsparse==1.8.0 pins onnx<1.15 and numpy<2, which sparsec cannot use (1.9.0 is an
end-of-life stub that does not install), so it never shares a process with sparsec: the
benchmarks start this file under that environment's Python as a server (`serve`), which
compiles the model once and answers each line on stdin with a median time, so that its rounds
alternate with onnxruntime's and sparsec's in the same run. `Peer` is that client.
NM_ARCH=avx2 makes DeepSparse use its AVX2 kernels on an AVX-512 host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parent / ".venv-deepsparse"
PACKAGE = "deepsparse==1.8.0"


def python() -> Path | None:
    """The environment's interpreter, if --install made it and DeepSparse imports there."""
    executable = VENV / "bin" / "python"
    if not executable.exists():
        return None
    probe = subprocess.run([str(executable), "-c", "import deepsparse"], capture_output=True)
    return executable if probe.returncode == 0 else None


def install() -> None:
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", PACKAGE], check=True)


NEWEST_IR, NEWEST_OPSET = 9, 19
"""What DeepSparse 1.8 reads: its bundled onnxruntime refuses IR 10 ("Unsupported model IR
version: 10, max supported IR version: 9"), and onnx 1.14, the newest it allows, knows opsets
up to 19. torch.onnx.export's default (dynamo) exporter writes IR 10 (opset 18 or later): export
for DeepSparse with `dynamo=False, opset_version=17` (IR 8)."""


def unreadable(model: str) -> str | None:
    """Why DeepSparse 1.8 cannot read the model file, or None."""
    import onnx

    proto = onnx.load(model, load_external_data=False)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                default=0)
    if proto.ir_version > NEWEST_IR or opset > NEWEST_OPSET:
        return (f"{model} has IR version {proto.ir_version} and opset {opset}; DeepSparse 1.8 "
                f"reads IR <= {NEWEST_IR} and opset <= {NEWEST_OPSET}")
    return None


class Peer:
    """One compiled DeepSparse engine in a child process; `median_ms()` times a round."""

    def __init__(self, model: str, feeds: dict, *, arch: str | None = None, cores: int = 1):
        import numpy as np

        executable = python()
        if executable is None:
            raise RuntimeError("DeepSparse is not installed: run "
                               "`python benchmarks/deepsparse_peer.py --install`")
        reason = unreadable(model)
        if reason:
            raise RuntimeError(reason)
        self._inputs = Path(model).with_suffix(".deepsparse-inputs.npz")
        np.savez(self._inputs, **feeds)
        environment = dict(os.environ)
        for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
            environment.pop(name, None)
        if arch:
            environment["NM_ARCH"] = arch
        self._child = subprocess.Popen(
            [str(executable), __file__, "serve", model, str(self._inputs), str(cores)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment)
        self.banner = self._reply()["ready"]

    def _reply(self) -> dict:
        line = self._child.stdout.readline()
        if not line:
            raise RuntimeError(f"DeepSparse's process ended (status {self._child.wait()})")
        return json.loads(line)

    def median_ms(self) -> float:
        self._child.stdin.write("time\n")
        self._child.stdin.flush()
        return self._reply()["ms"]

    def close(self) -> None:
        self._child.stdin.close()
        self._child.wait()
        self._inputs.unlink(missing_ok=True)


def serve(model: str, inputs: str, cores: int) -> None:
    """Runs under the DeepSparse environment: never imports sparsec. Replies go to the
    original stdout; DeepSparse's own prints (its banner) are sent to stderr."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    import numpy as np
    from deepsparse import Engine

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import median_seconds

    engine = Engine(model, batch_size=1, num_cores=cores)
    with np.load(inputs) as data:
        feeds = [data[name] for name in engine.input_names]
    print(json.dumps({"ready": f"DeepSparse {engine.num_cores} core(s)"}), file=replies,
          flush=True)
    for _ in sys.stdin:
        print(json.dumps({"ms": 1e3 * median_seconds(lambda: engine.run(feeds))}), file=replies,
              flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--install"]:
        install()
        print(f"installed {PACKAGE} in {VENV}")
    elif sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit(__doc__)
