"""Generated code under AddressSanitizer and UndefinedBehaviorSanitizer: the sample encoder (fp32
and int8) and an encoder layer of odd sizes (tails in every kernel), compiled with
-fsanitize=address,undefined -fno-sanitize-recover=all (TOOLCHAIN.md's recipe) for the portable
target and the host's best, run on two threads through runtime_c/driver.c built with the same
sanitizers, and compared with onnxruntime. Any out-of-bounds access, use after free, leak or
undefined operation fails the run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from sparsec import emulation
from sparsec.codegen import targets
from tests.conftest import run_onnxruntime

ROOT = Path(__file__).resolve().parents[1]
SANITIZE = ("-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all")


def tiny_bert_module():
    spec = importlib.util.spec_from_file_location("tiny_bert", ROOT / "samples" / "tiny_bert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("target", ["generic", "native"])
@pytest.mark.parametrize("case", ["sample", "sample-int8", "odd-sizes"])
def test_encoders_run_clean_under_sanitizers(target, case, compiler):
    tiny_bert = tiny_bert_module()
    if case == "odd-sizes":
        model = tiny_bert.tiny_bert(3, hidden=36, num_heads=3, ffn=72, layers=1, vocab=64,
                                    seq=23)
        feeds = tiny_bert.tiny_bert_inputs(3, vocab=64, seq=23, padded=5)
    else:
        model, feeds = tiny_bert.tiny_bert(), tiny_bert.tiny_bert_inputs()
    quantize = "dynamic" if case.endswith("int8") else None
    result = compiler.compile(model, target, extra_cflags=SANITIZE, quantize=quantize)
    outputs = emulation.run(result.library, targets.resolve(target), result.info, feeds,
                            threads=2, cache_dir=compiler.cache_dir, driver_flags=SANITIZE)
    got = outputs["last_hidden_state"]
    wanted = run_onnxruntime(model, feeds)[0]
    # int8 against fp32: the sample's --quantize tolerance (tests/test_tiny_bert.py)
    tolerance = 0.02 * (wanted.max() - wanted.min()) if quantize else 1e-4
    np.testing.assert_allclose(got, wanted, rtol=0, atol=tolerance)
