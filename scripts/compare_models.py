#!/usr/bin/env python3
"""How far a trained model moved from another (its start), tensor by tensor.

    python3 scripts/compare_models.py START.bin END.bin [--tensors qkvw attprojw fcw fcprojw]

Both are llm.c GPT-2 model files (a run's model.bin) of the same shape. For each tensor it prints the share
of elements that differ, the mean |value| of each model (for a DQT or BitNet model, mean |value| of the
block matrices is the grid's scale: the step of ternary, about the range of every width), the relative
change ‖END − START‖ / ‖START‖, and how many distinct values END holds (a grid model's codes in use).
"""

import argparse
import sys

import numpy as np

from llmc_io import LlmcError, read_model

BLOCK_MATRICES = ["qkvw", "attprojw", "fcw", "fcprojw"]


def compare(start, end, names):
    rows = []
    for name in names:
        a, b = start[name].astype(np.float64), end[name].astype(np.float64)
        for layer in range(a.shape[0] if name in BLOCK_MATRICES else 1):
            x, y = (a[layer], b[layer]) if name in BLOCK_MATRICES else (a, b)
            rows.append((f"{name}[{layer}]" if name in BLOCK_MATRICES else name, float(np.mean(x != y)),
                         float(np.mean(np.abs(x))), float(np.mean(np.abs(y))),
                         float(np.linalg.norm(y - x) / max(np.linalg.norm(x), 1e-30)), len(np.unique(y))))
    return rows


def main(argv):
    parser = argparse.ArgumentParser(description="Per-tensor change between two llm.c GPT-2 model files.")
    parser.add_argument("start", help="the model before (e.g. a 1-step run at a negligible learning rate)")
    parser.add_argument("end", help="the model after")
    parser.add_argument("--tensors", nargs="+", default=BLOCK_MATRICES, help="tensor names (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        (shape_a, start), (shape_b, end) = read_model(args.start), read_model(args.end)
    except LlmcError as error:
        print(f"compare_models.py: error: {error}", file=sys.stderr)
        return 1
    if shape_a != shape_b:
        print(f"compare_models.py: error: shapes differ: {shape_a} vs {shape_b}", file=sys.stderr)
        return 1
    unknown = [n for n in args.tensors if n not in start]
    if unknown:
        print(f"compare_models.py: error: no tensor {unknown[0]} (known: {', '.join(start)})", file=sys.stderr)
        return 1
    print(f"{'tensor':12s} {'changed':>8s} {'mean|start|':>12s} {'mean|end|':>10s} {'rel change':>11s} {'values':>7s}")
    for name, changed, mean_a, mean_b, rel, distinct in compare(start, end, args.tensors):
        print(f"{name:12s} {changed:8.3f} {mean_a:12.5f} {mean_b:10.5f} {rel:11.3f} {distinct:7d}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
