"""Tiny random-weight Hugging Face encoders exported as a new user would: `torch.onnx.export`
in its default (dynamo, opset 18) and TorchScript (`dynamo=False`, opset 17) modes, with the
default (sdpa) and eager attention, plus float16, block-pruned and optimum variants; text
encoders and a ViT (pixels in, a patch-embedding Conv first).

Seeded: the same case gives the same weights and inputs on every run. Run as a script to
write every case into a folder: `python tests/exports/encoders.py OUT_DIR`.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HIDDEN, LAYERS, HEADS, INTERMEDIATE, VOCAB, SEQ, BATCH = 32, 2, 2, 64, 100, 16, 2
IMAGE, PATCH = 32, 8  # ViT: 16 patches and the class token


@dataclass(frozen=True)
class Case:
    family: str  # a key of FAMILIES
    exporter: str  # "dynamo", "torchscript" or "optimum"
    attention: str  # "sdpa" (transformers' default) or "eager"
    variant: str = ""  # "", "fp16", "pruned" or "no-token-types"

    @property
    def id(self) -> str:
        return "-".join(p for p in (self.family, self.exporter, self.attention, self.variant)
                        if p)


def _common(**extra) -> dict:
    return dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
                max_position_embeddings=64, **extra)


def _config(family: str):
    import transformers as t
    if family == "bert":
        return t.BertConfig(**_common(type_vocab_size=2))
    if family == "distilbert":
        return t.DistilBertConfig(vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS,
                                  hidden_dim=INTERMEDIATE, max_position_embeddings=64)
    if family == "roberta":
        return t.RobertaConfig(**_common(pad_token_id=1))
    if family == "xlm-roberta":
        return t.XLMRobertaConfig(**_common(pad_token_id=1))
    if family == "albert":
        return t.AlbertConfig(**_common(embedding_size=16))
    if family == "electra":
        return t.ElectraConfig(**_common(embedding_size=16))
    if family == "mpnet":
        return t.MPNetConfig(**_common(pad_token_id=1))
    if family == "vit":
        return t.ViTConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                           num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
                           image_size=IMAGE, patch_size=PATCH, num_channels=3)
    raise ValueError(family)


FAMILIES = ("bert", "distilbert", "roberta", "albert", "electra", "mpnet", "xlm-roberta", "vit")
IMAGES = ("vit",)  # families that take pixel_values
TOKEN_TYPES = ("bert", "albert", "electra")  # families whose forward takes token_type_ids


def cases() -> list[Case]:
    # MPNet has no sdpa attention in transformers (its default is eager).
    matrix = [Case(f, e, a) for f in FAMILIES for e in ("dynamo", "torchscript")
              for a in ("sdpa", "eager") if not (f == "mpnet" and a == "sdpa")]
    return matrix + [
        Case("bert", "torchscript", "sdpa", "no-token-types"),
        Case("bert", "dynamo", "sdpa", "no-token-types"),
        Case("bert", "torchscript", "sdpa", "fp16"),
        Case("bert", "dynamo", "sdpa", "fp16"),
        Case("bert", "torchscript", "sdpa", "pruned"),
        Case("bert", "dynamo", "eager", "pruned"),
        Case("bert", "optimum", "sdpa"),
        Case("roberta", "optimum", "sdpa"),
        Case("vit", "torchscript", "sdpa", "pruned"),
    ]


def inputs(case: Case) -> dict[str, np.ndarray]:
    """Token ids away from the padding id, and a mask with padding at the end of one row
    (as a tokenizer pads a batch)."""
    rng = np.random.default_rng(7)
    if case.family in IMAGES:
        return {"pixel_values": rng.standard_normal((BATCH, 3, IMAGE, IMAGE)).astype(np.float32)}
    ids = rng.integers(3, VOCAB, size=(BATCH, SEQ), dtype=np.int64)
    mask = np.ones((BATCH, SEQ), np.int64)
    mask[1, SEQ - 5:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    if case.family in TOKEN_TYPES and case.variant != "no-token-types":
        types = np.zeros((BATCH, SEQ), np.int64)
        types[:, SEQ // 2:] = 1
        feeds["token_type_ids"] = types
    return feeds


def prune_4x1(model, density: float = 0.1) -> None:
    """Keep the largest `density` of each Linear's 4x1 blocks (4 consecutive input channels of
    one output channel) by L2 norm; zero the rest."""
    import torch
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.in_features % 4 == 0:
                w = module.weight  # [out, in]
                blocks = w.reshape(w.shape[0], -1, 4).norm(dim=-1)
                keep = max(1, int(round(density * blocks.numel())))
                threshold = blocks.flatten().kthvalue(blocks.numel() - keep + 1).values
                w.mul_((blocks >= threshold).repeat_interleave(4, dim=1).to(w.dtype))


def build_model(case: Case):
    import torch
    import transformers
    torch.manual_seed(0)
    config = _config(case.family)
    model = transformers.AutoModel.from_config(config, attn_implementation=case.attention)
    model.eval()
    if case.variant == "pruned":
        prune_4x1(model)
    return model


def export(case: Case, folder: Path) -> Path:
    """Export `case` into `folder` and return the model file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{case.id}.onnx"
    if case.exporter == "optimum":
        return _export_optimum(case, folder, path)
    import torch
    model = build_model(case)
    feeds = inputs(case)
    names = list(feeds)

    class FirstOutput(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(**dict(zip(names, args))).last_hidden_state

    args = tuple(torch.from_numpy(feeds[n]) for n in names)
    dynamic = {n: {0: "batch"} if case.family in IMAGES else {0: "batch", 1: "sequence"}
               for n in names}
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), \
            contextlib.redirect_stderr(quiet):
        warnings.simplefilter("ignore")
        if case.exporter == "dynamo":
            torch.onnx.export(FirstOutput(model), args, str(path), input_names=names,
                              output_names=["last_hidden_state"],
                              dynamic_shapes=(tuple(dynamic[n] for n in names),))
        else:
            torch.onnx.export(FirstOutput(model), args, str(path), input_names=names,
                              output_names=["last_hidden_state"], dynamo=False,
                              dynamic_axes=dynamic)
    if case.variant == "fp16":
        _to_float16(path)
    return path


def _to_float16(path: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    model = onnx.load(str(path), load_external_data=True)
    onnx.save(convert_float_to_float16(model, keep_io_types=True), str(path))


def _export_optimum(case: Case, folder: Path, path: Path) -> Path:
    from optimum.exporters.onnx import main_export
    model = build_model(case)
    source = folder / f"{case.id}-pretrained"
    model.save_pretrained(source)
    out = folder / f"{case.id}-optimum"
    main_export(str(source), output=str(out), task="feature-extraction", no_post_process=True,
                do_validation=False)
    (out / "model.onnx").rename(path)
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "build/exports")
    for case in cases():
        try:
            print(case.id, export(case, target))
        except Exception as exc:  # a script for looking: say which failed and go on
            print(case.id, "FAILED:", type(exc).__name__, str(exc).splitlines()[:1])
