"""Large pure-Python steps moved off the event loop, so that one big answer does not hold every other client.

Building a large answer (a prediction object and its JSON or protobuf form for each of 100 images × 1000 classes) is
Python code: on the loop it runs as one step of seconds (measured by the ``loop`` benchmark family). In a worker
thread the same code yields the GIL every ``sys.getswitchinterval()`` (5 ms), so the loop runs in between and the
other clients wait milliseconds instead; only the request that asked for the large answer pays for it. Small answers
stay on the loop, where a thread hop (~50 µs) would cost more than the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Items (predictions, strings, numbers) above which a step leaves the loop: about 2–5 ms of Python work.
OFF_LOOP_ITEMS = 2048


async def step(fn: Callable[..., T], *args: object, items: int) -> T:
    """``fn(*args)``: on the loop when it handles at most OFF_LOOP_ITEMS items, else in the default executor."""
    if items <= OFF_LOOP_ITEMS:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


# A JSON request body above this is parsed in a worker thread (``step`` with items = bytes // JSON_BYTES_PER_ITEM).
# orjson and NumPy are C calls that keep the GIL, but there they are two holds of their own (parsing a 2 MiB body of
# one-digit numbers: about 35 ms, then 25 ms turning a million numbers into an array), with the loop running between
# them and before and after, instead of one step of their sum plus the checks around them.
JSON_BYTES_PER_ITEM = 32
