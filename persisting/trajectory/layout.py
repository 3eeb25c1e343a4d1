"""Step layouts compiled into straight-line store functions: the per-step hot path of logging.

An RL loop logs the same fields with the same types step after step. Once a
:class:`~persisting.trajectory.buffer.StepBuffer` has checked one such step in full, it asks
here for a function specialised to that layout (field names, value types, array dtypes and
shapes): it fetches every value, tests each with one ``type(...) is`` (plus dtype identity and
shape equality for arrays, the int64 range for Python ints) and, only when all pass, stores them
into the buffer. No loop, no per-field tuple unpacking, no dict of layouts: about half the
Python of the generic check. The function is bound to one buffer, so a logged step costs one
call: the capacity and registry-version checks and the row count are in it. It appends each value
to a per-field list (an array as its bytes: ``tobytes`` copies it, so the caller may reuse the
array), which costs a fraction of a numpy item store (``a[i] = v`` takes ~2,000 instructions
for a small array); the buffer moves the lists into its numpy columns and marks the rows valid
in bulk (every field of the layout is present in such a row) when it next reads or changes its
columns. A step that differs in any way (a field more or less,
another type or shape) gets False and goes through the generic checks.

The generated source names nothing from the caller: field names, types, dtypes and shapes are
bound as constants in the function's namespace, never pasted into the source text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["LayoutKey", "compiled"]

# one entry per field: (name, value type, array dtype or None, array shape or "is a Python int")
LayoutKey = tuple[tuple[str, type, np.dtype | None, Any], ...]
# store(step, version) -> bool: the step stored as the buffer's next row, or False (nothing stored)
StoreFn = Callable[[Mapping[str, Any], int], bool]
# store_values(values, version) -> bool: the same for the values in the layout's field order
ValuesFn = Callable[[Sequence[Any], int], bool]
# bind(buffer, version, capacity, appends) -> (StoreFn, ValuesFn) for that buffer
BindFn = Callable[[Any, int, int, tuple[Callable[[Any], None], ...]], tuple[StoreFn, ValuesFn]]

_INT64 = (-(1 << 63), 1 << 63)
_CACHE: dict[LayoutKey, BindFn] = {}
_CACHE_MAX = 512


def compiled(key: LayoutKey) -> BindFn:
    """``bind(buffer, version, capacity, appends)``: store functions for ``buffer``;
    ``appends`` holds each field's ``list.append`` in ``key`` order. ``store(step, version)``
    appends ``step``'s values (arrays as bytes) and adds one to ``buffer.n`` and
    ``buffer.unsealed`` if the step has exactly layout ``key``, the field registry is still at
    ``version`` and the row fits ``capacity``; else it returns False and stores nothing.
    ``store_values(values, version)`` does the same for the values in ``key``'s field order."""
    fn = _CACHE.get(key)
    if fn is None:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        fn = _CACHE[key] = _build(key)
    return fn


def _build(key: LayoutKey) -> BindFn:
    ns: dict[str, Any] = {"LO": _INT64[0], "HI": _INT64[1]}
    k = len(key)
    vs = ", ".join(f"v{j}" for j in range(k))
    # type tests, then the appends: the same for a step given as a dict and in field order
    checks: list[str] = []
    for j, (name, t, dtype, shape) in enumerate(key):
        ns[f"N{j}"], ns[f"T{j}"] = name, t
        test = f"type(v{j}) is not T{j}"
        if dtype is not None:
            ns[f"D{j}"], ns[f"S{j}"] = dtype, shape
            test += f" or v{j}.dtype is not D{j} or v{j}.shape != S{j}"
        elif shape:  # a Python int: must fit the int64 column
            test += f" or not LO <= v{j} < HI"
        checks += [f"        if {test}:", "            return False"]
    checks += [f"        a{j}(v{j}.tobytes())" if key[j][2] is not None else f"        a{j}(v{j})" for j in range(k)]
    checks += ["        buf.n = i + 1", "        buf.unsealed += 1", "        return True"]
    head = f"        if current != version or i >= capacity or len({{}}) != {k}:"
    src = ["def bind(buf, version, capacity, appends):",
           f"    {', '.join(f'a{j}' for j in range(k))}, = appends",
           "    def store(step, current):",
           "        i = buf.n",
           head.format("step"),
           "            return False",
           "        try:",
           f"            {vs}, = " + ", ".join(f"step[N{j}]" for j in range(k)) + ",",
           "        except KeyError:",
           "            return False",
           *checks,
           # values in the layout's field order (a wrapper that logs fixed fields builds no dict)
           "    def store_values(values, current):",
           "        i = buf.n",
           head.format("values"),
           "            return False",
           f"        {vs}, = values",
           *checks,
           "    return store, store_values"]
    exec("\n".join(src), ns)  # noqa: S102 - source built above from fixed templates only
    return ns["bind"]
