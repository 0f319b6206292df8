"""``python -m benchmarks``: the project's performance targets (``benchmarks/targets.py``), each measured
against its baseline in one run.

A number without its baseline, measured in the same run on the same machine, says little on a shared machine
whose speed drifts from minute to minute. So each row here is a *ratio*: two things timed back to back (in-process
comparisons interleave their repeats), with the median and min–max of the repeats, the thread count pinned and
stated, and the target it answers marked met / not met.

Families (``--only``): runtime, folding, server, batch, numpy, training, startup — one module each. The results go
to ``benchmarks/results/<date>-<host>.json`` (machine info included) and ``latest.md`` (the full table, linked from
docs/benchmarks.md).
"""
