"""The loader's side of sequence-length buckets: which plan serves a request, its inputs padded
to that plan's length, and the outputs cut back to the request's.

A library compiled with `--input-shape 'input_ids=1x{32,64,128}'` holds one plan per length
(compiler/buckets.py); its model info's "buckets" names the lengths and, per input and output
whose shape follows the length, the axes that equal it. A request of any length up to the
longest runs on the smallest plan that fits: its bucketed inputs are padded with zeros (token
ids 0, token types 0, attention mask 0, so that attention ignores the padded positions) and
each output is cut back along its bucketed axes. Outputs with no such axis (the same shape in
every plan: a pooled output, such as a [CLS] pooler's) are returned as they are. Padding is
only sound when the model can ignore it, that is when it takes an attention mask; a model
without one accepts exactly the bucket lengths.
"""

from __future__ import annotations

import numpy as np

from sparsec.errors import InputError


class Buckets:
    def __init__(self, record: dict):
        self.lengths = tuple(record["lengths"])
        self.inputs = {name: axes[0] for name, axes in record["inputs"].items()}
        self.outputs = {name: tuple(axes) for name, axes in record["outputs"].items()}
        # A mask that hides the padding, by name as exporters call it (as sparsec/inputs.py
        # recognises one).
        self.masked = any("mask" in name.lower() for name in self.inputs)

    def describe(self) -> str:
        return ", ".join(map(str, self.lengths))

    def choose(self, arrays: dict[str, np.ndarray]) -> tuple[int, int]:
        """(plan, the request's length) for inputs already checked but for their lengths."""
        found = {name: arrays[name].shape[axis] for name, axis in self.inputs.items()}
        length = next(iter(found.values()))
        if any(other != length for other in found.values()):
            listed = ", ".join(f"{name!r} {size}" for name, size in found.items())
            raise InputError(f"the inputs' lengths along their sequence axes differ ({listed}); "
                             "they must be equal")
        name = next(iter(found))
        where = f"input {name!r} has length {length} along axis {self.inputs[name]}"
        if not 1 <= length <= self.lengths[-1]:
            raise InputError(f"{where}; this library's buckets are {self.describe()}, so it "
                             f"runs lengths 1 to {self.lengths[-1]}: recompile with a longer "
                             "bucket, or shorten the input")
        plan = next(i for i, bucket in enumerate(self.lengths) if bucket >= length)
        if self.lengths[plan] != length and not self.masked:
            raise InputError(f"{where}, not one of this library's bucket lengths "
                             f"({self.describe()}); the model takes no attention mask that "
                             "could hide padding, so padding would change its results: pass "
                             "exactly a bucket length")
        return plan, length

    def pad(self, name: str, array: np.ndarray, length: int) -> np.ndarray:
        """`array` with zeros after its own length along its bucketed axis, up to `length`."""
        axis = self.inputs.get(name)
        if axis is None or array.shape[axis] == length:
            return array
        shape = list(array.shape)
        shape[axis] = length
        padded = np.zeros(shape, dtype=array.dtype)
        padded[tuple(slice(0, size) for size in array.shape)] = array
        return padded

    def trim(self, name: str, array: np.ndarray, length: int) -> np.ndarray:
        """`array` cut back to `length` along each of its bucketed axes."""
        axes = self.outputs.get(name, ())
        if not axes or all(array.shape[axis] == length for axis in axes):
            return array
        cut = tuple(slice(0, length) if axis in axes else slice(None)
                    for axis in range(array.ndim))
        return np.ascontiguousarray(array[cut])
