"""The IR's text form, written and read: `--dump-ir`'s files, and pass tests written as the
graph before a pass and the graph expected after it (as TVM's are).

    graph opset=17
      input  'x': float32[2x4]
      const  'w': float32[4x4] const
      %0 MatMul('x', 'w') -> 'h': float32[2x4]  # node 'mm'
      %1 Relu('h') -> 'y'  {alpha=1.0}  => key | avx512_vnni: other_key
      output 'y': float32[2x4]

Every tensor's type is written once: graph inputs, constants and outputs on their own lines,
other values where their node makes them. A constant's data is not text: `parse_graph` takes
it by name, and a constant it is not given reads as zeros of its type. Sparsity, the memory
plan and layouts the printer writes for the reader; the parser reads tensors' layouts and
nodes' kernel keys, and leaves the rest to the passes that compute it.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import numpy as np

from sparsec.compiler.ir import Graph, Node, Tensor

# 'name': dtype[2x3] layout=feature-major const density=... (the name a Python str literal)
_NAME = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
_TENSOR = re.compile(rf"(?P<name>{_NAME}): (?P<dtype>\w+)\[(?P<shape>[^\]]*)\](?P<rest>.*)")
_NODE = re.compile(
    rf"%(?P<index>\d+) (?P<op>\w+)\((?P<inputs>.*?)\) -> (?P<outputs>.*?)"
    rf"(?:  \{{(?P<attrs>.*)\}})?(?:  => (?P<kernel>\S+)(?P<dispatch>(?: \| [^|#]+: [^ |#]+)*))?"
    rf"(?:  # node (?P<node>{_NAME}))?$")


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(round(value, 6))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def format_tensor(t: Tensor) -> str:
    shape = "x".join(str(d) for d in t.shape) or "scalar"
    text = f"{t.name!r}: {t.dtype}[{shape}]"
    if t.layout != "row-major":
        text += f" layout={t.layout}"
    if t.is_constant:
        text += " const"
    if t.sparsity is not None:
        s = t.sparsity
        text += f" density={s.density:.3f} pattern={s.pattern}"
        if s.packed is not None:
            text += f" blocks={s.packed.num_blocks}"
    return text


def format_graph(graph: Graph) -> str:
    """Stable, readable text: used by --dump-ir and by pass tests."""
    listed = set(graph.inputs) | set(graph.outputs)
    lines = [f"graph opset={graph.opset}"]
    lines += [f"  input  {format_tensor(graph.tensors[n])}" for n in graph.inputs]
    consts = sorted(n for n, t in graph.tensors.items() if t.is_constant and n not in listed)
    lines += [f"  const  {format_tensor(graph.tensors[n])}" for n in consts]
    for i, node in enumerate(graph.nodes):
        attrs = ", ".join(f"{k}={format_value(v)}" for k, v in sorted(node.attrs.items()))
        ins = ", ".join(repr(n) for n in node.inputs)
        outs = ", ".join(repr(n) if not n or n in listed or n not in graph.tensors
                         else format_tensor(graph.tensors[n]) for n in node.outputs)
        lines.append(f"  %{i} {node.op}({ins}) -> {outs}" + (f"  {{{attrs}}}" if attrs else "")
                     + (f"  => {node.kernel}" if node.kernel else "")
                     + "".join(f" | {feature}: {key}" for feature, key in node.dispatch)
                     + (f"  # node {node.name!r}" if node.name else ""))
    lines += [f"  output {format_tensor(graph.tensors[n])}" for n in graph.outputs]
    if graph.memory is not None:
        lines.append(f"  arena {graph.memory.arena_bytes} bytes")
        for name, offset in sorted(graph.memory.offsets.items(), key=lambda kv: kv[1]):
            lines.append(f"    @{offset} {name!r}")
    return "\n".join(lines) + "\n"


def parse_graph(text: str, constants: dict[str, np.ndarray] | None = None) -> Graph:
    """The graph `format_graph` wrote (or a test wrote by hand in that form), with the
    constants' data taken from `constants` by name (zeros of its type where absent)."""
    constants = constants or {}
    lines = [line for line in text.splitlines() if line.strip()]
    header = re.fullmatch(r"graph opset=(\d+)", lines[0].strip()) if lines else None
    if header is None:
        raise ValueError("IR text starts with 'graph opset=N'")
    graph = Graph(inputs=[], outputs=[], nodes=[], tensors={}, opset=int(header.group(1)))
    for number, line in enumerate(lines[1:], start=2):
        body = line.strip()
        try:
            if body.startswith(("input ", "const ", "output ")):
                kind, described = body.split(maxsplit=1)
                tensor = _read_tensor(described, constants)
                graph.tensors.setdefault(tensor.name, tensor)
                if kind == "input":
                    graph.inputs.append(tensor.name)
                elif kind == "output":
                    graph.outputs.append(tensor.name)
            elif body.startswith("%"):
                node, made = _read_node(body, constants)
                graph.nodes.append(node)
                for tensor in made:
                    graph.tensors[tensor.name] = tensor
            elif not body.startswith(("arena ", "@", "layout ")):
                raise ValueError("not an input, const, node or output line")
        except (ValueError, SyntaxError) as error:
            raise ValueError(f"IR text line {number}: {error}: {body!r}") from None
    unknown = sorted({name for node in graph.nodes for name in node.inputs + node.outputs
                      if name and name not in graph.tensors})
    if unknown:
        raise ValueError(f"IR text names tensors it never types: {', '.join(map(repr, unknown))}")
    return graph


def _read_tensor(described: str, constants: dict[str, np.ndarray]) -> Tensor:
    match = _TENSOR.fullmatch(described)
    if match is None:
        raise ValueError("expected 'name': dtype[shape]")
    name = ast.literal_eval(match.group("name"))
    shape_text = match.group("shape")
    shape = () if shape_text == "scalar" else tuple(int(d) for d in shape_text.split("x"))
    dtype, rest = match.group("dtype"), match.group("rest").split()
    layout = next((word.split("=", 1)[1] for word in rest if word.startswith("layout=")),
                  "row-major")
    data = None
    if "const" in rest:
        data = constants.get(name)
        if data is None:
            data = np.zeros(shape, dtype)
        elif tuple(data.shape) != shape or data.dtype != np.dtype(dtype):
            raise ValueError(f"constant {name!r} given as {data.dtype}{list(data.shape)}")
    return Tensor(name, shape, dtype, data, layout)


def _read_node(body: str, constants: dict[str, np.ndarray]) -> tuple[Node, list[Tensor]]:
    match = _NODE.fullmatch(body)
    if match is None:
        raise ValueError("expected %N Op('input', ...) -> 'output'")
    inputs = ast.literal_eval(f"[{match.group('inputs')}]")
    outputs, made = [], []
    for item in _split_outputs(match.group("outputs")):
        if _TENSOR.fullmatch(item):
            tensor = _read_tensor(item, constants)
            made.append(tensor)
            outputs.append(tensor.name)
        else:
            outputs.append(ast.literal_eval(item))
    attrs = {}
    if match.group("attrs"):
        call = ast.parse(f"f({match.group('attrs')})", mode="eval").body
        attrs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    dispatch = tuple(tuple(part.split(": ", 1)) for part in
                     (match.group("dispatch") or "").split(" | ")[1:])
    name = ast.literal_eval(match.group("node")) if match.group("node") else ""
    return Node(match.group("op"), inputs, outputs, attrs, name, match.group("kernel") or "",
                dispatch), made


def _split_outputs(text: str) -> list[str]:
    """A node's outputs: quoted names (with a type after a value's), ", " between them;
    a comma inside a quoted name does not split."""
    items = re.findall(rf"(?:{_NAME})(?:: \w+\[[^\]]*\](?: \S+)*?)?(?=, |$)", text)
    if ", ".join(items) != text:
        raise ValueError(f"cannot read the outputs {text!r}")
    return items
