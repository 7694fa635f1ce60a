"""Decoding hostile JSON: what the operator spends on the worst documents a tenant can make it read.

    .venv/bin/python bench/jsondepth_bench.py [--size 1400000] [--repeat 5]

Each document is about ``--size`` bytes (a Kubernetes object is at most about 1.5 MB): a plain wide one,
one of many lists each nested 200 levels (deeper than the 96 levels the operator decodes, shallower than
Python's decoder breaks at), and one nested 1,200 levels. For each it prints the best of ``--repeat``
runs of ``json.loads`` alone (where it can decode at all), of ``jsondepth.too_deep`` and of
``jsondepth.decode_objects`` (judge, cut what is too deep, decode), and the ratio of the last to
``json.loads``: the cost of reading such an object whatever its shape, in time linear in its size.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from pipeline_operator import jsondepth


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def documents(size: int) -> dict[str, bytes]:
    wide = ",".join(['{"k":[1,"a]",{"b":null}]}'] * (size // 26))
    many_deep = ",".join(["[" * 200 + "]" * 200] * (size // 401))
    depth = 1200
    one_deep = '{"a":' * depth + '"' + "x" * max(0, size - 6 * depth) + '"' + "}" * depth
    wrap = '{{"metadata":{{"name":"x","managedFields":[{}]}}}}'
    return {"wide": wrap.format(wide).encode(), "200 deep, many": wrap.format(many_deep).encode(),
            "1,200 deep": wrap.format(one_deep).encode()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_400_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{'document':<16} {'bytes':>9} {'json.loads':>11} {'too_deep':>9} {'decode_objects':>15} {'ratio':>6}")
    for name, raw in documents(args.size).items():
        try:
            plain: float | None = best(lambda raw=raw: json.loads(raw), args.repeat)
        except RecursionError:
            plain = None
        judged = best(lambda raw=raw: jsondepth.too_deep(raw, jsondepth.MAX_OBJECT_DEPTH), args.repeat)
        decoded = best(lambda raw=raw: jsondepth.decode_objects(raw), args.repeat)
        shown = f"{plain * 1000:9.1f}ms" if plain is not None else f"{'fails':>11}"
        ratio = f"{decoded / plain:5.2f}x" if plain else f"{'-':>6}"
        print(f"{name:<16} {len(raw):>9} {shown} {judged * 1000:7.1f}ms {decoded * 1000:13.1f}ms {ratio}")


if __name__ == "__main__":
    main()
