from sparsec.codegen.targets import resolve
from sparsec.compiler.passes import PassContext

from sparsec.api import cost_model


def context(target: str = "generic") -> PassContext:
    return PassContext(cost=cost_model(resolve(target)), verify_each=True)
