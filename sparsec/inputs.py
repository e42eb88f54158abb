"""A model's inputs for the command line: arrays read from .npy files (`--input NAME=FILE`),
the rest drawn at random, seeded, from values the model accepts.

Works from the model info's input records, so the same inputs serve a loaded library (`run`,
`benchmark`) and one that runs elsewhere (`verify` under qemu).
"""

from __future__ import annotations

import numpy as np

from sparsec.errors import SparsecError


def read_files(specs: list[str], known: list[str]) -> dict[str, np.ndarray]:
    """`NAME=FILE.npy` arguments as arrays; every NAME must be one of `known`."""
    feeds = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            raise SparsecError(f"bad --input {spec!r}: expected NAME=FILE.npy")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise SparsecError(f"cannot read input {name!r} from {path}: {exc}") from None
    unknown = [name for name in feeds if name not in known]
    if unknown:
        raise SparsecError(f"--input names {', '.join(map(repr, unknown))}, not an input of "
                           f"this model; its inputs are: {', '.join(map(repr, known))}")
    return feeds


def describe(record: dict) -> str:
    return f"{record['dtype']}[{'x'.join(map(str, record['shape'])) or 'scalar'}]"


def generate(record: dict, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A valid value for one input record of the model info, and how it was made ("ones",
    "zeros", or "random" and any bounds).

    Masks are all ones and token types all zeros (by name, as Hugging Face exports call them):
    random masks or segment ids would be valid but unlike any real request. Integers that index
    a table (the info's `index_range`, recorded at compile time) are uniform over its rows;
    other integers are 0 or 1, which every model that takes flags or ids accepts."""
    name, shape, dtype = record["name"].lower(), record["shape"], np.dtype(record["dtype"])
    if "mask" in name:
        return np.ones(shape, dtype), "ones"
    if "token_type" in name:
        return np.zeros(shape, dtype), "zeros"
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype), "random"
    if "index_range" in record:
        low, high = record["index_range"]
        return rng.integers(low, high, shape).astype(dtype), f"random in [{low}, {high})"
    return rng.integers(0, 2, shape).astype(dtype), "random 0 or 1"


def model_inputs(records: list[dict], specs: list[str], seed: int,
                 log=None, buckets: dict | None = None) -> dict[str, np.ndarray]:
    """Every input of the model: from `specs` (NAME=FILE.npy) where given, else generated
    with `seed`; `log(line)` hears how each generated one was made. With the model info's
    `buckets`, inputs that follow the sequence length are generated at the length of one
    given from a file (the records' shapes are the longest bucket's)."""
    feeds = read_files(specs, [record["name"] for record in records])
    axes = {name: found[0] for name, found in (buckets or {}).get("inputs", {}).items()}
    length = next((feeds[name].shape[axis] for name, axis in axes.items()
                   if name in feeds and feeds[name].ndim > axis), None)
    rng = np.random.default_rng(seed)
    for record in records:
        if record["name"] not in feeds:
            if length is not None and record["name"] in axes:
                shape = list(record["shape"])
                shape[axes[record["name"]]] = length
                record = dict(record, shape=shape)
            feeds[record["name"]], how = generate(record, rng)
            if log is not None:
                label, _, bounds = how.partition(" ")
                seeded = f" (seed {seed})" if label == "random" else ""
                log(f"input {record['name']!r}: {label} {describe(record)}{seeded}"
                    + (f" {bounds}" if bounds else ""))
    return feeds
