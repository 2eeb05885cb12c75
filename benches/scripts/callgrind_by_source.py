#!/usr/bin/env python3
"""Marginal instructions per request of one http_driver variant over another, by source.

Reads the callgrind files of `benches/scripts/http_callgrind.sh` (cg.<variant>.<N>) made
from a driver built with line tables, so that inlined code is charged to the file it was
written in rather than to the function it was inlined into:

  CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_TARGET_DIR=target/prof \
      cargo build --release -p monetize-benches --bin http_driver
  DRIVER=target/prof/release/http_driver VARIANTS="plain monetize-router" \
      benches/scripts/http_callgrind.sh
  benches/scripts/callgrind_by_source.py target/http-callgrind monetize-router plain 2000 12000

Prints the difference per request in groups (the key MAC's crates, arc-swap, memcpy,
monetize's own code, the standard library inlined into it, the rest), then per file.
"""
import collections
import re
import sys


def self_cost_by_file(path):
    """Self instructions per source file (inlined code counted where it was written)."""
    cost = collections.Counter()
    names = {}
    current = None
    in_call = False

    def name(value):
        m = re.match(r"\((\d+)\)(?: (.*))?", value)
        if not m:
            return value
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), value)

    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            key, _, value = line.partition("=")
            if key in ("fl", "fi", "fe"):
                current = name(value)
            elif key in ("cfi", "cfl"):
                name(value)
            elif key == "calls":
                in_call = True
            elif line[0].isdigit() or line[0] in "+-*":
                parts = line.split()
                if in_call:  # the inclusive cost of a call, not self cost
                    in_call = False
                elif len(parts) > 1:
                    cost[current] += int(parts[1])
    return cost


def per_request(directory, variant, n1, n2):
    a = self_cost_by_file(f"{directory}/cg.{variant}.{n1}")
    b = self_cost_by_file(f"{directory}/cg.{variant}.{n2}")
    return {k: (b[k] - a[k]) / (n2 - n1) for k in set(a) | set(b)}


GROUPS = [
    ("key MAC crates (aes, cmac, cipher, block-buffer, dbl, hybrid-array) and key_mac.rs",
     re.compile(r"/(aes|cmac|cipher|block-buffer|dbl|hybrid-array)-[0-9.]+/|x86/aes\.rs|key_mac\.rs")),
    ("arc-swap and compiled/cell.rs", re.compile(r"/arc-swap-[0-9.]+/|compiled/cell\.rs")),
    ("memcpy (moves of futures and requests)", re.compile(r"memmove")),
    ("monetize's own code", re.compile(r"/monetize-(core|tower|axum)/src/")),
    ("the standard library inlined into it", re.compile(r"^/rustc/")),
]


def main():
    directory, variant, base = sys.argv[1:4]
    n1, n2 = int(sys.argv[4]), int(sys.argv[5])
    x = per_request(directory, variant, n1, n2)
    y = per_request(directory, base, n1, n2)
    diff = {k: x.get(k, 0) - y.get(k, 0) for k in set(x) | set(y)}
    groups = collections.Counter()
    for f, v in diff.items():
        label = next((g for g, rx in GROUPS if rx.search(f or "")), "the rest")
        groups[label] += v
    print(f"{variant} over {base}: {sum(diff.values()):+.0f} instructions per request")
    for label, v in groups.most_common():
        print(f"{v:+8.0f}  {label}")
    print()
    for f, v in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:30]:
        print(f"{v:+8.1f}  {f}")


if __name__ == "__main__":
    main()
