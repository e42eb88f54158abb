from sparsec.api import cost_model
from sparsec.codegen.targets import resolve
from sparsec.compiler.passes import PassContext


def context(target: str = "generic") -> PassContext:
    return PassContext(cost=cost_model(resolve(target)), verify_each=True)
