import subprocess

from hypothesis import given, settings
from hypothesis import strategies as st

from sparsec.codegen import cnames
from sparsec.codegen.build import find_compiler

HOSTILE = ['x"; system("touch pwned"); //', "*/ int evil; /*", "line\nbreak", "back\\\nslash",
           "??/ trigraph ??=", "#include <stdio.h>", "\x01\x7f", "naïve – 名前", "\\", '"', "",
           "x" * 5000, "int", "a\\0b"]


def compile_and_print(tmp_path, texts):
    """A C program printing each literal as bytes: the round trip proves the escaping."""
    body = "\n".join(f"  fwrite({cnames.c_string_literal(t)}, 1, {len(t.encode())}, stdout);"
                     "\n  fputc(0, stdout);" for t in texts)
    source = tmp_path / "p.c"
    source.write_text(f"#include <stdio.h>\nint main(void) {{\n{body}\n  return 0;\n}}\n")
    exe = tmp_path / "p"
    subprocess.run([find_compiler(), "-std=c11", "-trigraphs", "-Wall", "-Werror", str(source),
                    "-o", str(exe)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True).stdout
    return out.split(b"\0")[:-1]


def test_hostile_text_round_trips_through_c(tmp_path):
    assert compile_and_print(tmp_path, HOSTILE) == [t.encode() for t in HOSTILE]


@settings(max_examples=15, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=["Cs"],
                                              blacklist_characters="\0"), max_size=60),
                min_size=1, max_size=20))
def test_any_text_round_trips_through_c(tmp_path_factory, texts):
    tmp = tmp_path_factory.mktemp("lit")
    assert compile_and_print(tmp, texts) == [t.encode() for t in texts]


def test_literal_contains_only_safe_characters():
    for text in HOSTILE:
        literal = cnames.c_string_literal(text)
        inner = literal.replace('"\n    "', "")[1:-1]
        assert "\n" not in inner and "?" not in inner and "*/" not in inner
        assert '"' not in inner.replace('\\042', "")


def test_identifiers_come_from_indices():
    assert cnames.tensor_var(17) == "t17"
    assert cnames.node_fn(3, "sparsec_f32_gemm_ukernel_1x1__scalar") == \
        "sparsec_f32_gemm_ukernel_1x1__scalar__node3"
    # plans after the first (sequence-length buckets) share the object: their names differ
    assert cnames.node_fn(3, "sparsec_f32_gemm_ukernel_1x1__scalar", 2) == \
        "sparsec_f32_gemm_ukernel_1x1__scalar__plan2_node3"
    assert cnames.plan_fn(2) == "sparsec__model_run_plan2"
