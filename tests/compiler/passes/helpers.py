import dataclasses
import textwrap

from sparsec.codegen import selection
from sparsec.codegen.costs import cost_model
from sparsec.codegen.targets import resolve
from sparsec.compiler.ir_text import parse_graph
from sparsec.compiler.options import CompileOptions
from sparsec.compiler.passes import PassContext
from sparsec.compiler.verify import verify


def context(target: str = "generic", quantize: str | None = None,
            mixed_precision: bool = True) -> PassContext:
    return PassContext(cost=cost_model(resolve(target)),
                       options=CompileOptions(verify_each=True, quantize=quantize,
                                              mixed_precision=mixed_precision),
                       int8_cost=cost_model(resolve(target), "int8"),
                       bf16_cost=cost_model(resolve(target), "bfloat16"))


def selecting(target: str) -> PassContext:
    """A context whose select-kernels, scratch and layout functions are the target's, as
    sparsec.compile hands them in: for tests that run passes after select-kernels."""
    resolved = resolve(target)
    return dataclasses.replace(context(target),
                               select_kernel=lambda g, n: selection.choose(g, n, resolved),
                               scratch_bytes=selection.scratch_bytes,
                               layouts=selection.layout_support, target=resolved.name)


def ir(text: str) -> str:
    """IR text written indented inside a test, as `Graph.to_text()` writes it."""
    return textwrap.dedent(text).lstrip("\n")


def run_passes(before: str, *passes, constants: dict | None = None,
               ctx: PassContext | None = None) -> str:
    """The IR text after `passes` (modules with NAME and run) ran in order on the graph that
    `before` writes (compiler/ir_text.py), each result checked by the verifier."""
    graph = parse_graph(ir(before), constants)
    ctx = ctx or context()
    for compiler_pass in passes:
        graph = compiler_pass.run(graph, ctx)
        verify(graph, compiler_pass.NAME)
    return graph.to_text()
