"""Small CNNs written in torch (torchvision's wheel does not match the CPU torch here):
MobileNet-v1, MobileNet-v2 and ResNet with basic or bottleneck blocks, at any width and
resolution, magnitude-pruned on request, exported by `torch.onnx.export` both ways (the
default dynamo exporter, and TorchScript with `dynamo=False`, opset 17).

Weights are seeded random; BatchNorm's running statistics are calibrated on random batches
after pruning, so every layer's activations stay near unit scale whatever the density. Exports
are cached in a folder, keyed by the spec, the exporter, this file's source and the versions of
torch and onnx, and written atomically, so parallel test workers may share the folder.

Run as a script to export the presets, check each in onnxruntime against torch, and print
the ONNX operators each export contains:
`python tests/cnn_models.py [--full] [--out build/cnn-models]`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

EXPORTERS = ("dynamo", "torchscript")
SCOPES = ("all", "all-but-stem", "pointwise")


@dataclass(frozen=True)
class Pruning:
    """Keep `density` of each chosen conv's weights by magnitude (L1 norm of a block).

    A block is `block[0]` consecutive input channels by `block[1]` consecutive output channels
    at one kernel position: for a 1x1 conv, exactly the R x C block of the K x N matrix the
    conv multiplies by (sparsec's 4x1 is (4, 1)). `scope`: "all" convs, "all-but-stem" (every
    conv but the first), or "pointwise" (the 1x1 convs of one group, MobileNets' heavy ones).
    """
    density: float
    scope: str = "all-but-stem"
    block: tuple[int, int] = (1, 1)

    @property
    def id(self) -> str:
        shape = "unstructured" if self.block == (1, 1) else f"{self.block[0]}x{self.block[1]}"
        return f"{self.scope}-{shape}-{round(100 * (1 - self.density))}"


@dataclass(frozen=True)
class Spec:
    """One network. `arch`: "mobilenet-v1", "mobilenet-v2", "resnet-basic" or
    "resnet-bottleneck"; `width` multiplies every channel count; `depths`: ResNet's blocks
    per stage; `activation`: the MobileNets' "relu6" or "relu" (ResNet uses ReLU)."""
    arch: str
    width: float = 1.0
    resolution: int = 224
    depths: tuple[int, ...] = (3, 4, 6, 3)
    activation: str = "relu6"
    pruning: Pruning | None = None
    batch: int = 1
    classes: int = 1000
    seed: int = 0

    @property
    def id(self) -> str:
        parts = [self.arch, f"w{self.width:g}", f"r{self.resolution}"]
        if self.arch.startswith("resnet"):
            parts.append("d" + "".join(map(str, self.depths)))
        else:
            parts.append(self.activation)
        parts.append(self.pruning.id if self.pruning else "dense")
        return "-".join(parts)


RESNET50 = Spec("resnet-bottleneck", depths=(3, 4, 6, 3))
RESNET18 = Spec("resnet-basic", depths=(2, 2, 2, 2))
MOBILENET_V1 = Spec("mobilenet-v1")
MOBILENET_V2 = Spec("mobilenet-v2")

TINY = dict(width=0.25, resolution=32, batch=2, classes=10)
"""Test size: every layer kind of the full nets, channels /4, 32x32 images, 2 per batch."""
TINY_SPECS = {
    "resnet-basic": replace(RESNET18, **TINY, depths=(1, 1, 1, 1)),
    "resnet-bottleneck": replace(RESNET50, **TINY, depths=(1, 2, 1, 1)),
    "mobilenet-v1": replace(MOBILENET_V1, **TINY, activation="relu"),
    "mobilenet-v2": replace(MOBILENET_V2, **TINY),
}

TINY_PRUNED = [replace(TINY_SPECS["resnet-bottleneck"], pruning=Pruning(0.1)),
               replace(TINY_SPECS["mobilenet-v1"], pruning=Pruning(0.1, "pointwise", (4, 1))),
               replace(TINY_SPECS["mobilenet-v2"], pruning=Pruning(0.1, "pointwise"))]
"""90 % pruned: ResNet every conv but the stem, MobileNets their 1x1 convs (v1 in 4x1 blocks)."""


def _channels(value: float) -> int:
    """Round to a multiple of 8, at least 8, never more than 10 % down (torchvision's
    `_make_divisible`): SIMD kernels and block patterns like channel counts of 8."""
    rounded = max(8, int(value + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * value else rounded


def build(spec: Spec):
    """The network in eval mode: seeded weights, pruned as `spec.pruning` says, BatchNorm
    calibrated on random batches."""
    import torch

    from tests.cnn_nets import ARCHITECTURES

    torch.manual_seed(spec.seed)
    model = ARCHITECTURES[spec.arch](spec, _channels)
    _randomise_batchnorm_affine(model)
    if spec.pruning:
        prune(model, spec.pruning)
    calibrate_batchnorm(model, spec)
    return model.eval()


def _randomise_batchnorm_affine(model) -> None:
    """Scales and shifts away from torch's 1 and 0, so that folding BatchNorm into the conv
    before it changes the weights per channel, as a trained net's would."""
    import torch

    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)


def calibrate_batchnorm(model, spec: Spec, batches: int = 4) -> None:
    """Running mean and variance from `batches` random batches in train mode (momentum None:
    their plain average), so that in eval mode every BatchNorm outputs about unit variance."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    generator = torch.Generator().manual_seed(2)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(max(spec.batch, 8), 3, spec.resolution, spec.resolution,
                              generator=generator))
        # Pruning leaves channels that are (nearly) constant: their variance, near 0, would
        # scale them, rounding errors included, by up to gamma / sqrt(eps) = 300x. Measured on
        # the tiny MobileNet-v1 pruned 90 %: torch float32 against float64 differs by 4.2e-5
        # of the logits' range without this floor, 3.0e-5 with it (see TOLERANCE for the rest).
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                floor = VARIANCE_FLOOR * float(module.running_var.mean())
                module.running_var.clamp_(min=floor)
    model.eval()


VARIANCE_FLOOR = 0.01
"""Of a BatchNorm's mean channel variance: no channel is scaled more than 10x the typical."""


def prunable_convs(model, scope: str) -> list:
    import torch

    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r}: choose one of {', '.join(SCOPES)}")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if scope == "all-but-stem":
        return convs[1:]
    if scope == "pointwise":
        return [c for c in convs if c.kernel_size == (1, 1) and c.groups == 1]
    return convs


def prune(model, pruning: Pruning) -> None:
    """Zero, in every conv of `pruning.scope`, the blocks of smallest L1 norm: exactly
    round((1 - density) * blocks) of them per conv, ties broken by position (stable), so that
    each conv has the requested density up to one block. Pruned weights are +0.0."""
    import torch

    rows, cols = pruning.block
    for conv in prunable_convs(model, pruning.scope):
        out_channels, in_channels, kh, kw = conv.weight.shape
        if in_channels % rows or out_channels % cols:
            raise ValueError(f"conv weight {tuple(conv.weight.shape)} does not tile into "
                             f"{rows}x{cols} blocks")
        # [kh, kw, in/rows, rows, out/cols, cols]: blocks of channels at one kernel position
        taps = conv.weight.detach().permute(2, 3, 1, 0).reshape(
            kh, kw, in_channels // rows, rows, out_channels // cols, cols)
        norms = taps.abs().sum(dim=(3, 5))
        drop = round((1 - pruning.density) * norms.numel())
        keep = torch.ones(norms.numel(), dtype=torch.bool)
        keep[torch.argsort(norms.flatten(), stable=True)[:drop]] = False
        mask = keep.reshape(norms.shape)[:, :, :, None, :, None].expand_as(taps)
        kept = torch.where(mask, taps, torch.zeros((), dtype=taps.dtype))
        conv.weight.data = kept.reshape(kh, kw, in_channels, out_channels) \
            .permute(3, 2, 0, 1).contiguous()


def inputs(spec: Spec) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(spec.seed + 7)
    shape = (spec.batch, 3, spec.resolution, spec.resolution)
    return {"input": rng.standard_normal(shape).astype(np.float32)}


def reference(spec: Spec) -> np.ndarray:
    """torch's logits for `inputs(spec)`."""
    import torch

    with torch.no_grad():
        return build(spec)(torch.from_numpy(inputs(spec)["input"])).numpy()


def cache_key(spec: Spec, exporter: str) -> str:
    """Everything an export depends on: a change to any invalidates the cached file."""
    import onnx
    import torch

    here = Path(__file__).resolve().parent
    sources = b"".join((here / name).read_bytes() for name in ("cnn_models.py", "cnn_nets.py"))
    text = json.dumps({"spec": asdict(spec), "exporter": exporter, "torch": torch.__version__,
                       "onnx": onnx.__version__,
                       "source": hashlib.sha256(sources).hexdigest()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def export(spec: Spec, exporter: str, cache_dir: Path) -> Path:
    """The ONNX file of `spec` by `exporter` ("dynamo" or "torchscript"), from `cache_dir` when
    an identical export is there. Static shapes; input "input", output "logits"; one file
    (weights inside, never external data)."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter {exporter!r}: choose one of {', '.join(EXPORTERS)}")
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{spec.id}-b{spec.batch}-{exporter}-{cache_key(spec, exporter)}.onnx"
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=cache_dir))
    try:
        _export_to(build(spec), spec, exporter, scratch / "model.onnx")
        import onnx

        # The dynamo exporter may write weights to a side file; one self-contained file is
        # what the benchmarks and DeepSparse take. Renamed into place only when complete.
        model = onnx.load(str(scratch / "model.onnx"), load_external_data=True)
        onnx.save(model, str(scratch / "whole.onnx"))
        os.replace(scratch / "whole.onnx", path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


def _export_to(model, spec: Spec, exporter: str, path: Path) -> None:
    import contextlib
    import io
    import warnings

    import torch

    example = (torch.from_numpy(inputs(spec)["input"]),)
    names = dict(input_names=["input"], output_names=["logits"])
    quiet = io.StringIO()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(quiet), \
            contextlib.redirect_stderr(quiet):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(model, example, str(path), **names)
        else:
            torch.onnx.export(model, example, str(path), **names, dynamo=False,
                              opset_version=17, do_constant_folding=True)


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        op = f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") \
            else node.op_type
        counts[op] = counts.get(op, 0) + 1
    return dict(sorted(counts.items()))


@dataclass
class Check:
    """An export run in onnxruntime against torch, and the operators it contains."""
    spec: Spec
    exporter: str
    path: Path
    error: float  # max |onnxruntime - torch| over the logits' range
    ops: dict[str, int] = field(default_factory=dict)


TOLERANCE = 1e-3
"""Of the logits' range, between two float32 evaluations of one export (onnxruntime against
torch here; sparsec against onnxruntime in tests/models/test_cnn_models.py). Summation order alone
changes a K-term dot product by about sqrt(K) * 2**-24 of its size, 1e-6 or less per layer, but
these random, BatchNorm-renormalised nets amplify a perturbation 1.3-1.5x per layer (measured on
the tiny MobileNet-v1 pruned 90 %: torch float32 against float64 differs by 2e-7 of the range
after the stem and 1.4e-4 after the 27th conv, 3e-5 on the logits). Measured onnxruntime
against torch: 1e-6 to 1e-5 on the tiny nets, 3.9e-5 on that MobileNet-v1, 3e-6 to 9e-6 on
the 224x224 ResNet-50 (dense, and 90 % unstructured) and MobileNets (90 % in their 1x1 convs).
1e-3 leaves a 10x margin; a wrong padding, stride or weight layout moves logits by a good
fraction of the range."""


def check(spec: Spec, exporter: str, cache_dir: Path) -> Check:
    import onnxruntime as ort

    path = export(spec, exporter, cache_dir)
    expected = reference(spec)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, inputs(spec))
    error = float(np.max(np.abs(got.astype(np.float64) - expected)) / np.ptp(expected))
    return Check(spec, exporter, path, error, op_counts(path))


def op_table(checks: list[Check]) -> str:
    """Markdown: one row per export, one column per operator, counts in the cells."""
    ops = sorted({op for c in checks for op in c.ops})
    header = ["model", "exporter", "max err / range", *ops]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in checks:
        cells = [c.spec.id, c.exporter, f"{c.error:.1e}", *(str(c.ops.get(op, "")) for op in ops)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def presets(full: bool) -> list[Spec]:
    """The tiny test nets, dense and pruned; with `full`, the benchmark's 224x224 nets too."""
    large = [RESNET50, RESNET18, MOBILENET_V1, MOBILENET_V2] if full else []
    return list(TINY_SPECS.values()) + TINY_PRUNED + large


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/cnn-models", help="the export cache folder")
    parser.add_argument("--full", action="store_true", help="also the 224x224 nets")
    args = parser.parse_args()
    checks = []
    for spec in presets(args.full):
        for exporter in EXPORTERS:
            checks.append(check(spec, exporter, Path(args.out)))
            print(f"{spec.id} {exporter}: {checks[-1].error:.1e} of the range "
                  f"({'ok' if checks[-1].error <= TOLERANCE else 'OVER ' + str(TOLERANCE)})",
                  flush=True)
    print(op_table(checks))


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
