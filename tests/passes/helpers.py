from sparsec.codegen.costs import cost_model
from sparsec.codegen.targets import resolve
from sparsec.compiler.options import CompileOptions
from sparsec.compiler.passes import PassContext


def context(target: str = "generic", quantize: str | None = None,
            mixed_precision: bool = True) -> PassContext:
    return PassContext(cost=cost_model(resolve(target)),
                       options=CompileOptions(verify_each=True, quantize=quantize,
                                              mixed_precision=mixed_precision),
                       int8_cost=cost_model(resolve(target), "int8"),
                       bf16_cost=cost_model(resolve(target), "bfloat16"))
