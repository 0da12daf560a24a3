#!/usr/bin/env python3
"""Measured GPU kernel time per op group of a training step, beside the step model's.

    python3 scripts/step_profile.py --dry-run DRYRUN.txt --kernels KERN.csv --optimizer-steps S
                                    [--micro-steps M]
                                    [--baseline-kernels KERN0.csv --baseline-optimizer-steps S0
                                     [--baseline-micro-steps M0]]
                                    [--json OUT.json]

DRYRUN.txt is what `train_gpt --device cuda --dry-run` printed for the profiled run's config: its "step
model" table gives the modelled ms per op group (matmuls, attention, element-wise, loss per micro-step; the
optimizer per optimizer step) and the accumulation steps per optimizer step.

KERN.csv is Nsight Systems' kernel summary of a training run of S optimizer steps (M micro-steps; M defaults
to S x the dry run's accumulation steps):
    nsys stats --report cuda_gpu_kern_sum --format csv --output PREFIX REPORT.nsys-rep
Columns are found by name: "Name", the total time ("Total Time (ns)", or "Total Time" in nanoseconds, or
another unit in parentheses: us, ms, s), and "Instances" when present. Rows of the same name are added up.

Every kernel name is put into an op group by its name (KERNEL_GROUPS below: the kernels of kernels/*.cuh by
their function name, cuBLAS/cuBLASLt/CUTLASS kernels by the patterns of their generated names). A group's
measured time is its kernels' total / M (the optimizer's / S). Kernels that match no pattern are listed as
unmatched and counted in no group.

Warm-up and set-up: a profile of a whole run also holds the kernels that run once (weight initialisation
and casts at start-up, the first step's cold caches and clock ramp-up). With --baseline-kernels (a second,
shorter run of S0 optimizer steps, M0 micro-steps, of the same config) every kernel's time and launches are
the difference of the two runs, divided by M - M0 (S - S0): the once-only work cancels and what remains is
the steady-state step. Kernels launched equally often in both runs are left out (and named): they belong to
no step. bench/profile_step.sh runs the two profiles this way.

Not measured here: memsets and copies (nsys reports them in cuda_gpu_mem_time_sum, not as kernels; the step
model counts the gradients' zeroing in the optimizer), gaps between kernels (launch overhead, host work), and
overlap (one stream: kernels do not overlap).
"""
import argparse
import csv
import json
import re
import sys

GROUPS = ["matmuls", "attention", "element-wise", "loss", "optimizer"]
# The dry run's label of each group (src/trainer.c's print_step_model).
DRY_RUN_LABELS = {"matmuls": "matmuls", "attention": "attention", "element-wise": "element-wise",
                  "loss": "loss", "optimizer": "optimizer (per optimizer step)"}

# Our own kernels, by the prefix of their function name (the demangled name without return type, namespace,
# template arguments and parameters). Checked before the library patterns, so that a template argument can
# never move one of ours into another group.
KERNEL_GROUPS = [
    # kernels/optimizer.cuh: the fused AdamW step, the gradient norm's chunk sums, DQT's decode of the codes.
    ("optimizer", ["optimizer_kernel", "grad_square_sums_kernel", "dqt_decode_kernel", "adamw"]),
    # kernels/classifier.cuh: softmax statistics and loss, the logits' gradient.
    ("loss", ["classifier_"]),
    # kernels/flash_attention.cuh (fused) and kernels/attention.cuh (materialized: softmax, head splits and
    # merges).
    ("attention", ["flash_", "attention_"]),
    # encoder.cuh, layernorm.cuh, gelu.cuh, column_sum.cuh (bias gradients' column partials, bias adds),
    # gradients.cuh (bf16 gradients' rounding and conversions), quantize.cuh (operand casts, amax, fp8 scales).
    ("element-wise", ["encoder_", "layernorm_", "gelu_", "column_partials", "cast_column_partials", "add_bias",
                      "accumulate_bf16", "bf16_to_f32", "f32_to_bf16", "quantize_", "convert_kernel",
                      "tensor_amax", "fp8_"]),
]

# cuBLAS / cuBLASLt products, matched anywhere in the lower-cased full name: the GEMM kernels of every
# generation (sm90_xmma_gemm_..., sm80_xmma_..., ampere_bf16_s16816gemm_..., nvjet_... on Hopper with CUDA
# 12.x, cutlass::Kernel2<cutlass_80_tensorop_...>), and cuBLASLt's helpers around them (split-K reduction,
# epilogues), which are part of the products' time.
MATMUL_PATTERNS = ["gemm", "xmma", "cutlass", "nvjet", "ampere_", "hopper_", "sm90_", "sm80_", "sm75_",
                   "volta_", "turing_", "cublas", "splitkreduce", "gemv"]
# cuBLASLt also launches kernels whose whole function name is "Kernel" or "Kernel2" (CUTLASS's entry points
# without a namespace in some builds).
MATMUL_FUNCTION_NAMES = ["kernel", "kernel2"]

TOP_KERNELS = 3


def fail(message):
    sys.exit(f"step_profile.py: {message}")


def function_name(kernel_name):
    """The bare function name of a demangled kernel name: 'void ns::f<T>(T *, int)' -> 'f'."""
    name = kernel_name.strip()
    name = re.sub(r"^(?:static\s+)?void\s+", "", name)
    cut = min((i for i in (name.find("<"), name.find("(")) if i >= 0), default=len(name))
    return name[:cut].split("::")[-1].strip()


def group_of(kernel_name):
    """The op group of a kernel, or None when no pattern matches."""
    function = function_name(kernel_name)
    for group, prefixes in KERNEL_GROUPS:
        if any(function.startswith(prefix) for prefix in prefixes):
            return group
    lowered = kernel_name.lower()
    if any(pattern in lowered for pattern in MATMUL_PATTERNS) or function.lower() in MATMUL_FUNCTION_NAMES:
        return "matmuls"
    return None


# ---- Nsight Systems' kernel summary ----

TIME_UNITS_NS = {"ns": 1.0, "us": 1e3, "μs": 1e3, "ms": 1e6, "s": 1e9}


def total_time_column(header, path, line):
    """(index, nanoseconds per unit) of the total time column: "Total Time (ns)", "Total Time", ..."""
    for i, cell in enumerate(header):
        match = re.fullmatch(r"total\s*time\s*(?:\((\S+)\))?", cell.strip().lower())
        if match:
            unit = match.group(1) or "ns"  # nsys's unit when the header names none
            if unit not in TIME_UNITS_NS:
                fail(f"{path}:{line}: unknown time unit {unit!r} in the column {cell!r}")
            return i, TIME_UNITS_NS[unit]
    return None, None


def column_named(header, name):
    for i, cell in enumerate(header):
        if cell.strip().lower() == name.lower():
            return i
    return None


def parse_number(text, path, line, column):
    cleaned = text.strip().replace(",", "")  # nsys's text reports group thousands; be lenient
    try:
        return float(cleaned)
    except ValueError:
        fail(f"{path}:{line}: the {column!r} cell is not a number: {text!r}")


def read_kernel_summary(path):
    """{kernel name: (total ns, launches)} from an nsys cuda_gpu_kern_sum CSV (launches None without an
    Instances column). Lines before the header (nsys's progress messages when its stdout was saved) are
    skipped: the header is the first row with a "Name" cell."""
    rows = []  # (line number where the row ends, cells): a quoted name may span lines
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f, strict=True)
            try:
                for row in reader:
                    rows.append((reader.line_num, row))
            except csv.Error as e:
                fail(f"{path}:{reader.line_num}: not CSV: {e}")
    except OSError as e:
        fail(f"cannot read the kernel summary {path}: {e.strerror}")
    except UnicodeDecodeError as e:
        fail(f"{path}: not text: {e}")
    header_at = next((i for i, (_, row) in enumerate(rows) if column_named(row, "Name") is not None), None)
    if header_at is None:
        fail(f"{path}: no header row with a \"Name\" column (expected nsys's cuda_gpu_kern_sum CSV: "
             f"nsys stats --report cuda_gpu_kern_sum --format csv)")
    header_line, header = rows[header_at]
    name_col = column_named(header, "Name")
    time_col, ns_per_unit = total_time_column(header, path, header_line)
    if time_col is None:
        fail(f"{path}:{header_line}: no total time column (\"Total Time (ns)\" or \"Total Time\") in the header: "
             f"{', '.join(header)}")
    launches_col = column_named(header, "Instances")
    kernels = {}
    for line, row in rows[header_at + 1:]:
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            fail(f"{path}:{line}: {len(row)} cells, but the header (line {header_line}) has {len(header)}")
        name = row[name_col].strip()
        if not name:
            fail(f"{path}:{line}: the \"Name\" cell is empty")
        total_ns = parse_number(row[time_col], path, line, header[time_col]) * ns_per_unit
        launches = parse_number(row[launches_col], path, line, "Instances") if launches_col is not None else None
        previous_ns, previous_launches = kernels.get(name, (0.0, 0.0 if launches is not None else None))
        kernels[name] = (previous_ns + total_ns, None if launches is None else previous_launches + launches)
    if not kernels:
        fail(f"{path}: the kernel summary lists no kernels (was the run profiled with --trace cuda?)")
    return kernels


def subtract_baseline(kernels, baseline):
    """Per kernel the profile's total minus the baseline profile's (kernels of only one run count as 0 in
    the other); and the names of the kernels launched equally often in both, which run once per process
    (start-up casts, say): none of their time belongs to a step, so they are left out, not kept as the
    noise of two equal times subtracted."""
    difference, once_only = {}, []
    for name in sorted(set(kernels) | set(baseline)):
        ns, launches = kernels.get(name, (0.0, 0.0))
        base_ns, base_launches = baseline.get(name, (0.0, 0.0))
        if launches is None or base_launches is None:
            difference[name] = (ns - base_ns, None)
        elif launches == base_launches:
            once_only.append(name)
        else:
            difference[name] = (ns - base_ns, launches - base_launches)
    return difference, once_only


# ---- the dry run's step model ----

def read_step_model(path):
    """{"groups": {group: modelled ms}, "micro_step_ms": float, "accumulation_steps": int} from the dry run's
    text."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        fail(f"cannot read the dry run {path}: {e.strerror}")
    start = next((i for i, line in enumerate(lines) if line.startswith("step model")), None)
    if start is None:
        fail(f"{path}: no \"step model\" table (the output of train_gpt --device cuda --dry-run is expected)")
    groups, micro_step_ms, accumulation_steps = {}, None, None
    label_to_group = {label: group for group, label in DRY_RUN_LABELS.items()}
    for number, line in enumerate(lines[start + 1:], start=start + 2):
        row = re.fullmatch(r"\s+(.+?)\s+(-?[\d.]+)\s+(-?[\d.]+)\s+(-?[\d.]+)\s*", line)
        if row and row.group(1) in label_to_group:
            groups[label_to_group[row.group(1)]] = float(row.group(4))
            continue
        total = re.match(r"\s+modelled micro-step ([\d.]+) ms \(optimizer / (\d+) accumulation steps", line)
        if total:
            micro_step_ms, accumulation_steps = float(total.group(1)), int(total.group(2))
            break
    missing = [DRY_RUN_LABELS[g] for g in GROUPS if g not in groups]
    if missing:
        fail(f"{path}:{start + 1}: the step model table lacks the rows {', '.join(missing)}")
    if micro_step_ms is None:
        fail(f"{path}:{start + 1}: the step model table has no \"modelled micro-step ... ms (optimizer / N "
             f"accumulation steps included)\" line")
    return {"groups": groups, "micro_step_ms": micro_step_ms, "accumulation_steps": accumulation_steps}


# ---- the comparison ----

def steps_of(micro_steps, optimizer_steps, accumulation_steps, what):
    """(micro-steps, optimizer steps) of one profile, M defaulting to S x the accumulation steps; a given M
    must agree with them (a dry run of another config would make every ratio wrong)."""
    if optimizer_steps < 1:
        fail(f"{what}: the optimizer steps must be at least 1, not {optimizer_steps}")
    expected = optimizer_steps * accumulation_steps
    if micro_steps is None:
        return expected, optimizer_steps
    if micro_steps != expected:
        fail(f"{what}: {micro_steps} micro-steps, but {optimizer_steps} optimizer steps of the dry run's "
             f"{accumulation_steps} accumulation steps are {expected} (is the dry run of the profiled config?)")
    return micro_steps, optimizer_steps


def measure_groups(kernels, micro_steps, optimizer_steps):
    """Per group the measured ms per micro-step (the optimizer's per optimizer step) and its kernels, largest
    first; and the unmatched kernels, per micro-step."""
    per_group = {group: [] for group in GROUPS}
    unmatched = []
    for name, (ns, launches) in kernels.items():
        group = group_of(name)
        divisor = optimizer_steps if group == "optimizer" else micro_steps
        entry = {"name": name, "ms": ns / 1e6 / divisor,
                 "launches": None if launches is None else launches / divisor}
        (unmatched if group is None else per_group[group]).append(entry)
    for entries in list(per_group.values()) + [unmatched]:
        entries.sort(key=lambda e: (-e["ms"], e["name"]))
    measured = {group: sum(e["ms"] for e in entries) for group, entries in per_group.items()}
    return measured, per_group, unmatched


def ratio(measured, modelled):
    return measured / modelled if modelled > 0 else None


def compare(model, kernels, micro_steps, optimizer_steps, once_only=()):
    measured, per_group, unmatched = measure_groups(kernels, micro_steps, optimizer_steps)
    accumulation = model["accumulation_steps"]
    # The micro-step as the dry run sums it: the four micro-step groups and 1/accumulation of the optimizer.
    measured_micro = sum(measured[g] for g in GROUPS if g != "optimizer") + measured["optimizer"] / accumulation
    return {
        "micro_steps": micro_steps, "optimizer_steps": optimizer_steps, "accumulation_steps": accumulation,
        "groups": {g: {"modelled_ms": model["groups"][g], "measured_ms": measured[g],
                       "ratio": ratio(measured[g], model["groups"][g]), "kernels": per_group[g]}
                   for g in GROUPS},
        "micro_step": {"modelled_ms": model["micro_step_ms"], "measured_ms": measured_micro,
                       "ratio": ratio(measured_micro, model["micro_step_ms"])},
        "unmatched": unmatched,
        "unmatched_ms": sum(e["ms"] for e in unmatched),
        "once_only": list(once_only),
    }


# ---- printing ----

def short_name(name, width=100):
    """A kernel name for the table: without its parameter list (the demangled signature), cut to width."""
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # the "(" of the parameter list is the first one outside template brackets
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and i > 0:
            cut = i
            break
    short = name[:cut]
    return short if len(short) <= width else short[:width - 3] + "..."


def format_ratio(value):
    return "n/a" if value is None else f"{value:.2f}"


def format_launches(launches):
    if launches is None:
        return ""
    return f"{launches:g} launch" + ("" if launches == 1 else "es")


def print_report(result, sources):
    print(f"step profile: measured GPU kernel time per op group against the step model ({sources})")
    print(f"  {result['micro_steps']:g} micro-steps in {result['optimizer_steps']:g} optimizer steps (the dry run: "
          f"{result['accumulation_steps']} per optimizer step); ms per micro-step, the optimizer's per optimizer "
          f"step")
    print(f"    {'group':<36} {'modelled ms':>12} {'measured ms':>12} {'measured/modelled':>18}")
    for group in GROUPS:
        row = result["groups"][group]
        print(f"    {DRY_RUN_LABELS[group]:<36} {row['modelled_ms']:12.2f} {row['measured_ms']:12.2f} "
              f"{format_ratio(row['ratio']):>18}")
    micro = result["micro_step"]
    label = f"micro-step (optimizer / {result['accumulation_steps']})"
    print(f"    {label:<36} {micro['modelled_ms']:12.2f} {micro['measured_ms']:12.2f} "
          f"{format_ratio(micro['ratio']):>18}")
    if result["unmatched"]:
        print(f"    {'unmatched kernels (in no group)':<36} {'':>12} {result['unmatched_ms']:12.2f}")
    print(f"  top kernels per group (ms, share of the group, launches; per micro-step, the optimizer's per "
          f"optimizer step):")
    for group in GROUPS:
        row = result["groups"][group]
        print(f"    {DRY_RUN_LABELS[group]}:" + ("" if row["kernels"] else " no kernels"))
        for entry in row["kernels"][:TOP_KERNELS]:
            share = f"{100 * entry['ms'] / row['measured_ms']:5.1f}%" if row["measured_ms"] > 0 else "    - "
            print(f"      {entry['ms']:10.3f} {share} {format_launches(entry['launches']):>18}  "
                  f"{short_name(entry['name'])}")
    if result["unmatched"]:
        print("  unmatched kernel names (no op group's pattern matches; add them to scripts/step_profile.py):")
        for entry in result["unmatched"]:
            print(f"      {entry['ms']:10.3f} {format_launches(entry['launches']):>18}  {entry['name']}")
    if result["once_only"]:
        names = ", ".join(short_name(name, 60) for name in result["once_only"])
        print(f"  left out, launched as often in the baseline (once per process): {names}")
    print("  not counted: memsets and copies (not kernels), gaps between kernels (launches, host work)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", required=True, metavar="DRYRUN.txt",
                        help="the output of train_gpt --device cuda --dry-run for the profiled config")
    parser.add_argument("--kernels", required=True, metavar="KERN.csv", help="nsys cuda_gpu_kern_sum CSV")
    parser.add_argument("--optimizer-steps", required=True, type=int, metavar="S")
    parser.add_argument("--micro-steps", type=int, metavar="M",
                        help="default: S x the dry run's accumulation steps")
    parser.add_argument("--baseline-kernels", metavar="KERN0.csv",
                        help="a shorter run of the same config, subtracted kernel by kernel")
    parser.add_argument("--baseline-optimizer-steps", type=int, metavar="S0")
    parser.add_argument("--baseline-micro-steps", type=int, metavar="M0")
    parser.add_argument("--json", metavar="OUT.json", help="also write the comparison as JSON")
    args = parser.parse_args()

    model = read_step_model(args.dry_run)
    accumulation = model["accumulation_steps"]
    kernels = read_kernel_summary(args.kernels)
    micro, optimizer = steps_of(args.micro_steps, args.optimizer_steps, accumulation, args.kernels)
    sources, once_only = args.kernels, []
    if args.baseline_kernels:
        if args.baseline_optimizer_steps is None:
            fail("--baseline-kernels needs --baseline-optimizer-steps")
        base_micro, base_optimizer = steps_of(args.baseline_micro_steps, args.baseline_optimizer_steps,
                                              accumulation, args.baseline_kernels)
        if base_optimizer >= optimizer:
            fail(f"the baseline ({base_optimizer} optimizer steps) must be shorter than the profile ({optimizer})")
        kernels, once_only = subtract_baseline(kernels, read_kernel_summary(args.baseline_kernels))
        micro, optimizer = micro - base_micro, optimizer - base_optimizer
        sources = f"{args.kernels} minus {args.baseline_kernels}"
    elif args.baseline_optimizer_steps is not None or args.baseline_micro_steps is not None:
        fail("--baseline-optimizer-steps and --baseline-micro-steps need --baseline-kernels")

    result = compare(model, kernels, micro, optimizer, once_only)
    print_report(result, sources)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
