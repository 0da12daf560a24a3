#!/usr/bin/env python3
"""Plots and tabulates train_gpt runs side by side.

    python3 scripts/plot_runs.py RUN_DIR [RUN_DIR ...] [--out DIR] [--log-x] [--smooth N]
                                 [--baseline RUN_DIR] [--group-by policy|lr|SECTION.KEY]

A RUN_DIR is a train_gpt output directory (its `output.dir`): log.jsonl, config.json and, for a run that
finished, summary.json. A run that died (no summary.json) is still plotted and tabulated from its log.

Written to --out (default: plots):
  loss.png            training loss against tokens seen (--smooth N: moving average over N steps)
  val_loss.png        validation loss against tokens seen (when a log has val_loss); a record with
                      "step": 0 (an evaluation before training) is drawn at 0 tokens, or with --log-x at
                      half a step's tokens (a log axis has no 0)
  update_quality.png  edq_rel and lost_frac against step, of the read weight (left) and of the stored
                      value (right: edq_rel_state, lost_frac_state), when a log has them (metrics.every > 0)
  lr.png              learning rate against step
  summary.md          a markdown table (also printed): run, policy, final and best validation loss,
                      tokens/s, peak memory, bytes per parameter, edq_rel, edq_rel_state, lost_frac and
                      lost_frac_state averaged over the last 20% of steps, diverged or not and at which step
  loss_diff.png       with --baseline: each run's training loss minus the baseline run's at the steps both
  loss_diff.csv       logged, as a moving average over --smooth steps (10 when --smooth is not given), since
                      differences of 0.01 nats vanish on the raw curves; the csv has run, step, diff and
                      smoothed; summary.md gets the mean difference over the last 20% of those steps
  groups.csv          with --group-by: per group, key (loss, val_loss) and step, the number of runs, their
                      mean and sample standard deviation (0 for one run), at the steps that every run of the
                      group logged; loss.png and val_loss.png then draw each group's mean with a ±1 std band
                      instead of its runs

--group-by takes `policy` (summary.json's or config.json's), `lr` (training.lr) or any key path of
config.json such as training.seed or precision.matmul; runs with equal values form a group (seeds of one
setting, say). Curves beyond ten get the palette's colours again with another line style (solid, dashed,
dotted, dash-dot: forty distinct styles).

Runs are named in the legends by their policy (from summary.json or config.json, plus the matmul format
when config.json overrides it); the run directory's name is added when two runs would share a name.

Divergence: a run counts as diverged at the first step whose loss is not a finite number; else where
scripts/sweep.py judged it diverged (its result.json); else, when it has no summary.json, at the step after
its log's last line (train_gpt stops without writing the non-finite step, so that is the step it found not
finite). A run that is still training therefore counts as diverged too: plot it after it ends.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass

FIGURE_SIZE = (8, 5)
FIGURE_DPI = 120
# The loss axis stops at this multiple of the highest initial loss, so that a diverging run does not
# flatten the curves of the others.
LOSS_AXIS_HEADROOM = 1.25
MIB = 1024 * 1024
# matplotlib's default ten colours ("tab10"), then the same colours with other dashes.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
LINE_STYLES = ["-", "--", ":", "-."]
DEFAULT_DIFF_SMOOTH = 10


class RunError(Exception):
    pass


@dataclass
class Run:
    path: str
    config: dict
    summary: dict | None
    log: list
    verdict: dict | None = None  # result.json, when scripts/sweep.py ran the run
    label: str = ""

    @property
    def dir_name(self) -> str:
        return os.path.basename(os.path.normpath(self.path))

    @property
    def policy(self) -> str:
        if self.summary and self.summary.get("policy"):
            return self.summary["policy"]
        return self.config.get("precision", {}).get("policy", "?")

    @property
    def matmul(self) -> str | None:
        """The matmul format when the config overrides the policy's, else None."""
        precision = self.config.get("precision", {})
        matmul = precision.get("matmul", "preset")
        if matmul in ("preset", None):
            return None
        rounding = precision.get("matmul_rounding", "nearest")
        return matmul if rounding == "nearest" else f"{matmul} {rounding}"


# ---- reading runs ----

def read_json_file(path: str) -> dict | None:
    """The JSON object in path, or None when there is no such file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e})") from e


def read_log(path: str) -> list:
    """The records of a log.jsonl, in order. An unreadable last line (a run killed while writing it) is
    dropped; an unreadable line elsewhere is an error."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f.read().split("\n") if line.strip()]
    except FileNotFoundError:
        return []
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):
                print(f"note: {path}: ignoring an incomplete last line", file=sys.stderr)
                break
            raise RunError(f"{path}:{number}: not valid JSON ({e})") from e
    return records


def load_run(path: str) -> Run:
    if not os.path.isdir(path):
        raise RunError(f"{path}: not a directory (expected a train_gpt output directory)")
    log = read_log(os.path.join(path, "log.jsonl"))
    summary = read_json_file(os.path.join(path, "summary.json"))
    config = read_json_file(os.path.join(path, "config.json")) or {}
    if not log and summary is None:
        raise RunError(f"{path}: no log.jsonl and no summary.json: not a train_gpt run directory, "
                       "or a run that has not logged a step yet")
    verdict = read_json_file(os.path.join(path, "result.json"))
    return Run(path=path, config=config, summary=summary, log=log, verdict=verdict)


def load_runs(paths: list) -> list:
    runs = [load_run(path) for path in paths]
    assign_labels(runs)
    return runs


def assign_labels(runs: list) -> None:
    """Names each run by its policy (and matmul override); adds the directory name, or the path when
    directory names clash too, where two runs would share a name."""
    def base(run):
        return run.policy if run.matmul is None else f"{run.policy} ({run.matmul})"

    def count(names, name):
        return sum(1 for n in names if n == name)

    bases = [base(run) for run in runs]
    dir_names = [run.dir_name for run in runs]
    for run, name in zip(runs, bases):
        if count(bases, name) == 1:
            run.label = name
        elif count(dir_names, run.dir_name) == 1:
            run.label = f"{name} [{run.dir_name}]"
        else:
            run.label = f"{name} [{run.path}]"


# ---- what a run's log says ----

def is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def series(run: Run, key: str) -> tuple:
    """(steps, values) of the records that have a finite number under key."""
    steps, values = [], []
    for record in run.log:
        value = record.get(key)
        if is_finite_number(value) and "step" in record:
            steps.append(record["step"])
            values.append(value)
    return steps, values


def divergence_step(run: Run) -> int | None:
    """The step at which the run diverged, or None when it did not (see the module's docstring)."""
    for record in run.log:
        if "loss" in record and not is_finite_number(record["loss"]):
            return record.get("step")
    if run.verdict and run.verdict.get("diverged"):
        return run.verdict.get("diverged_step")
    last_step = run.log[-1].get("step", len(run.log)) if run.log else 0
    if run.summary is None:
        return last_step + 1
    if run.summary.get("diverged"):
        return run.summary.get("diverged_step", last_step)
    return None


def tokens_per_step(run: Run) -> int:
    if run.summary and run.summary.get("steps"):
        return run.summary["tokens"] // run.summary["steps"]
    training = run.config.get("training", {})
    if training.get("tokens_per_step"):
        return training["tokens_per_step"]
    if training.get("batch_size") and training.get("seq_len"):
        return training["batch_size"] * training["seq_len"]
    raise RunError(f"{run.path}: cannot tell the tokens per step (no summary.json, and config.json lacks "
                   "training.batch_size and training.seq_len)")


def final_val_loss(run: Run):
    if run.summary is not None:
        return run.summary.get("final_val_loss")
    _, values = series(run, "val_loss")
    return values[-1] if values else None


def best_val_loss(run: Run):
    if run.summary is not None:
        return run.summary.get("best_val_loss")
    _, values = series(run, "val_loss")
    return min(values) if values else None


def mean_tokens_per_s(run: Run):
    if run.summary is not None:
        return run.summary.get("mean_tokens_per_s")
    _, values = series(run, "tokens_per_s")
    return sum(values) / len(values) if values else None


def tail_mean(steps: list, values: list, fraction: float):
    """Mean of the values over the last `fraction` of the steps (None when there are none)."""
    if not steps:
        return None
    start = steps[-1] * (1.0 - fraction)
    late = [v for s, v in zip(steps, values) if s > start]
    return sum(late) / len(late) if late else None


def late_mean(run: Run, key: str, fraction: float = 0.2):
    """Mean of a metric over the last `fraction` of the run's steps (the metric steps among them)."""
    return tail_mean(*series(run, key), fraction)


def tokens_axis(run: Run, steps: list, log_x: bool) -> list:
    """Tokens seen at each step; with a log axis, step 0 (before training) is put at half a step."""
    per_step = tokens_per_step(run)
    return [step * per_step if step > 0 or not log_x else 0.5 * per_step for step in steps]


# ---- comparing runs: a baseline, groups ----

def difference_from(run: Run, baseline: Run, key: str = "loss") -> tuple:
    """(steps, run's value minus the baseline's) at the steps where both logged a finite value."""
    base = dict(zip(*series(baseline, key)))
    steps, values = series(run, key)
    common = [(s, v - base[s]) for s, v in zip(steps, values) if s in base]
    return [s for s, _ in common], [d for _, d in common]


def config_value(run: Run, key: str):
    """The value a run is grouped by: `policy`, `lr` (training.lr) or a dotted path into config.json."""
    if key == "policy":
        return run.policy
    path = ["training", "lr"] if key == "lr" else key.split(".")
    value = run.config
    for part in path:
        if not isinstance(value, dict) or part not in value:
            raise RunError(f"{run.path}: config.json has no {'.'.join(path)} to group by")
        value = value[part]
    return value


def group_runs(runs: list, key: str) -> list:
    """[(label, runs)] for the distinct values of key, in the order they first appear."""
    groups = {}
    for run in runs:
        value = config_value(run, key)
        groups.setdefault(json.dumps(value) if not isinstance(value, str) else value, []).append(run)
    return [(f"{key}={value} ({len(members)} run{'s' if len(members) > 1 else ''})", members)
            for value, members in groups.items()]


def group_statistics(members: list, key: str) -> tuple:
    """(steps, means, stds) over the runs of a group at the steps that all of them logged; the standard
    deviation is the sample one (divisor n - 1), 0 for a group of one run."""
    per_run = [dict(zip(*series(run, key))) for run in members]
    steps = sorted(set.intersection(*(set(values) for values in per_run)))
    means, stds = [], []
    for step in steps:
        values = [values[step] for values in per_run]
        mean = sum(values) / len(values)
        means.append(mean)
        stds.append(math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0)
    return steps, means, stds


def line_style(index: int) -> dict:
    """Colour and dash of the index-th curve: ten colours, then again with the next dash style."""
    return {"color": PALETTE[index % len(PALETTE)],
            "linestyle": LINE_STYLES[(index // len(PALETTE)) % len(LINE_STYLES)]}


# ---- the table ----

def format_number(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if is_finite_number(value) else "—"


def format_memory(summary: dict | None) -> str:
    if not summary:
        return "—"
    parts = []
    if is_finite_number(summary.get("peak_host_memory_bytes")):
        parts.append(f"{summary['peak_host_memory_bytes'] / MIB:.1f} MiB")
    if is_finite_number(summary.get("peak_device_memory_bytes")):
        parts.append(f"{summary['peak_device_memory_bytes'] / MIB:.1f} MiB GPU")
    return " + ".join(parts) if parts else "—"


def late_mean_difference(run: Run, baseline: Run, fraction: float = 0.2):
    """Mean of the run's loss minus the baseline's over the last `fraction` of their common steps."""
    return tail_mean(*difference_from(run, baseline), fraction)


# The update-quality fields of log.jsonl that the table averages: each of the read weight beside the same
# of the stored value (update_metrics.h).
UPDATE_QUALITY_KEYS = ["edq_rel", "edq_rel_state", "lost_frac", "lost_frac_state"]


def summary_row(run: Run, baseline: Run | None = None) -> list:
    step = divergence_step(run)
    tokens_per_s = mean_tokens_per_s(run)
    bytes_per_param = run.summary.get("bytes_per_param") if run.summary else None
    return [
        run.dir_name,
        run.label,
        format_number(final_val_loss(run)),
        format_number(best_val_loss(run)),
        f"{tokens_per_s:,.0f}" if is_finite_number(tokens_per_s) else "—",
        format_memory(run.summary),
        str(bytes_per_param) if bytes_per_param is not None else "—",
    ] + [format_number(late_mean(run, key)) for key in UPDATE_QUALITY_KEYS] + [
        "no" if step is None else f"yes (step {step})",
    ] + ([format_number(late_mean_difference(run, baseline))] if baseline else [])


SUMMARY_HEADER = (["run", "policy", "final val loss", "best val loss", "tokens/s", "peak memory", "bytes/param"]
                  + [f"{key} (last 20%)" for key in UPDATE_QUALITY_KEYS] + ["diverged"])
BASELINE_COLUMN = "loss − baseline (last 20%)"


def markdown_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---- the figures ----

def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError:
        raise RunError("matplotlib is not installed: pip install -r requirements.txt") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def moving_average(values: list, window: int) -> list:
    """Trailing mean over the last `window` values (fewer at the start)."""
    averaged, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        averaged.append(total / min(i + 1, window))
    return averaged


def cap_loss_axis(axes, plotted: list) -> None:
    """Limits the loss axis to LOSS_AXIS_HEADROOM times the highest initial loss when some curve goes
    beyond it. plotted: the loss values of each curve."""
    curves = [values for values in plotted if values]
    if not curves:
        return
    top = LOSS_AXIS_HEADROOM * max(values[0] for values in curves)
    if max(max(values) for values in curves) <= top:
        return
    lowest = min(min(values) for values in curves)
    axes.set_ylim(bottom=lowest - 0.05 * (top - lowest), top=top)


def mark_divergence(axes, run: Run, xs: list, ys: list, line) -> None:
    if xs and divergence_step(run) is not None:
        axes.plot(xs[-1], ys[-1], marker="x", markersize=10, color=line.get_color())


def save(figure, axes, out_dir: str, name: str) -> str:
    axes.legend(fontsize="small")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    path = os.path.join(out_dir, name)
    figure.savefig(path, dpi=FIGURE_DPI)
    return path


def draw_band(axes, xs: list, means: list, stds: list, label: str, style: dict):
    """A group's mean as a line and mean ± std as a shaded band of the same colour."""
    (line,) = axes.plot(xs, means, label=label, linewidth=1.2, **style)
    axes.fill_between(xs, [m - d for m, d in zip(means, stds)], [m + d for m, d in zip(means, stds)],
                      color=style["color"], alpha=0.2, linewidth=0)
    return line


def plot_loss(plt, runs: list, out_dir: str, log_x: bool, smooth: int, groups: list | None = None) -> str:
    figure, axes = plt.subplots(figsize=FIGURE_SIZE)
    plotted = []
    if groups:
        for index, (label, members) in enumerate(groups):
            steps, means, stds = group_statistics(members, "loss")
            if smooth > 1:
                means, stds = moving_average(means, smooth), moving_average(stds, smooth)
            draw_band(axes, tokens_axis(members[0], steps, log_x), means, stds, label, line_style(index))
            plotted.append(means)
    else:
        for index, run in enumerate(runs):
            steps, losses = series(run, "loss")
            if smooth > 1:
                losses = moving_average(losses, smooth)
            tokens = tokens_axis(run, steps, log_x)
            (line,) = axes.plot(tokens, losses, label=run.label, linewidth=1.2, **line_style(index))
            mark_divergence(axes, run, tokens, losses, line)
            plotted.append(losses)
    cap_loss_axis(axes, plotted)
    if log_x:
        axes.set_xscale("log")
    title = "training loss" + (" (mean ± std per group)" if groups else "") + \
        (f" (moving average over {smooth} steps)" if smooth > 1 else "")
    axes.set(xlabel="tokens", ylabel="loss", title=title)
    path = save(figure, axes, out_dir, "loss.png")
    plt.close(figure)
    return path


def plot_val_loss(plt, runs: list, out_dir: str, log_x: bool, groups: list | None = None) -> str | None:
    if not any(series(run, "val_loss")[0] for run in runs):
        return None
    figure, axes = plt.subplots(figsize=FIGURE_SIZE)
    if groups:
        for index, (label, members) in enumerate(groups):
            steps, means, stds = group_statistics(members, "val_loss")
            if steps:
                xs = tokens_axis(members[0], steps, log_x)
                line = draw_band(axes, xs, means, stds, label, line_style(index))
                axes.plot(xs, means, linestyle="none", marker="o", markersize=3, color=line.get_color())
    else:
        for index, run in enumerate(runs):
            steps, values = series(run, "val_loss")
            if steps:
                axes.plot(tokens_axis(run, steps, log_x), values, marker="o", markersize=3, label=run.label,
                          **line_style(index))
    if log_x:
        axes.set_xscale("log")
    title = "validation loss" + (" (mean ± std per group)" if groups else "")
    if log_x and any(0 in series(run, "val_loss")[0] for run in runs):
        title += " (step 0 at half a step)"
    axes.set(xlabel="tokens", ylabel="validation loss", title=title)
    path = save(figure, axes, out_dir, "val_loss.png")
    plt.close(figure)
    return path


def plot_loss_difference(plt, runs: list, baseline: Run, out_dir: str, log_x: bool, smooth: int,
                         groups: list | None = None) -> tuple:
    """loss_diff.png and loss_diff.csv: each run's (or group mean's) loss minus the baseline's, smoothed."""
    figure, axes = plt.subplots(figsize=FIGURE_SIZE)
    rows = ["run,step,diff,smoothed"]
    base = dict(zip(*series(baseline, "loss")))
    if groups:
        curves = []
        for label, members in groups:
            steps, means, _ = group_statistics(members, "loss")
            common = [(s, m - base[s]) for s, m in zip(steps, means) if s in base]
            curves.append((label, members[0], [s for s, _ in common], [d for _, d in common]))
    else:
        curves = [(run.label, run, *difference_from(run, baseline)) for run in runs if run is not baseline]
    for index, (label, run, steps, diffs) in enumerate(curves):
        smoothed = moving_average(diffs, smooth)
        rows += [f"{label.replace(',', ';')},{s},{d!r},{m!r}" for s, d, m in zip(steps, diffs, smoothed)]
        if steps:
            axes.plot(tokens_axis(run, steps, log_x), smoothed, label=label, linewidth=1.2, **line_style(index))
    axes.axhline(0.0, color="black", linewidth=0.8)
    if log_x:
        axes.set_xscale("log")
    axes.set(xlabel="tokens", ylabel=f"loss − {baseline.label}",
             title=f"training loss minus the baseline's ({baseline.label}), moving average over {smooth} steps")
    path = save(figure, axes, out_dir, "loss_diff.png")
    plt.close(figure)
    csv_path = os.path.join(out_dir, "loss_diff.csv")
    with open(csv_path, "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    return path, csv_path


def write_group_table(groups: list, out_dir: str) -> str:
    lines = ["group,key,step,runs,mean,std"]
    for label, members in groups:
        for key in ("loss", "val_loss"):
            for step, mean, std in zip(*group_statistics(members, key)):
                lines.append(f"{label.replace(',', ';')},{key},{step},{len(members)},{mean!r},{std!r}")
    path = os.path.join(out_dir, "groups.csv")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def plot_update_quality(plt, runs: list, out_dir: str) -> str | None:
    """Relative EDQ (top) and lost-update fraction (bottom), of the read weight (left) and of the stored
    value (right)."""
    keys = [("edq_rel", "relative EDQ ⟨Δ̂,Δ⟩/‖Δ‖², read weight"),
            ("edq_rel_state", "relative EDQ, stored value"),
            ("lost_frac", "lost-update fraction, read weight"),
            ("lost_frac_state", "lost-update fraction, stored value")]
    if not any(series(run, key)[0] for run in runs for key, _ in keys):
        return None
    figure, all_axes = plt.subplots(2, 2, figsize=(FIGURE_SIZE[0] * 2, FIGURE_SIZE[1] * 1.5), sharex=True,
                                    sharey="row")
    for axes, (key, title) in zip(all_axes.flat, keys):
        for index, run in enumerate(runs):
            steps, values = series(run, key)
            if steps:
                axes.plot(steps, values, marker=".", label=run.label, **line_style(index))
        axes.set(ylabel=key, title=title)
        axes.grid(True, alpha=0.3)
        if axes.has_data():
            axes.legend(fontsize="small")
    for axes in all_axes[-1]:
        axes.set_xlabel("step")
    figure.tight_layout()
    path = os.path.join(out_dir, "update_quality.png")
    figure.savefig(path, dpi=FIGURE_DPI)
    plt.close(figure)
    return path


def plot_lr(plt, runs: list, out_dir: str) -> str:
    figure, axes = plt.subplots(figsize=FIGURE_SIZE)
    for index, run in enumerate(runs):
        steps, values = series(run, "lr")
        axes.plot(steps, values, label=run.label, **line_style(index))
    axes.set(xlabel="step", ylabel="learning rate", title="learning rate")
    path = save(figure, axes, out_dir, "lr.png")
    plt.close(figure)
    return path


# ---- command line ----

def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def parse_args(argv: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Plot loss, validation loss, update quality and learning rate of train_gpt runs, and "
                    "write a markdown summary table.",
        epilog="Outputs in --out: loss.png, val_loss.png, update_quality.png (when the logs have edq_rel "
               "or lost_frac, and their _state twins), lr.png and summary.md. A run without summary.json counts "
               "as diverged at the step after its log's last line; a non-finite loss in the log, at that step.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="train_gpt output directories (each with log.jsonl; config.json and "
                             "summary.json when present)")
    parser.add_argument("--out", default="plots", metavar="DIR",
                        help="where the figures and summary.md go (default: %(default)s)")
    parser.add_argument("--log-x", action="store_true", help="log-scaled tokens axis for the loss figures")
    parser.add_argument("--smooth", type=positive_int, metavar="N",
                        help="plot the training loss as a moving average over N steps (default: none; "
                             f"the --baseline differences: {DEFAULT_DIFF_SMOOTH})")
    parser.add_argument("--baseline", metavar="RUN_DIR",
                        help="also plot every run's training loss minus this run's at the same steps "
                             "(loss_diff.png, loss_diff.csv); it need not be among RUN_DIR")
    parser.add_argument("--group-by", metavar="policy|lr|SECTION.KEY",
                        help="draw the mean ± std of the runs that share this value (policy, lr = "
                             "training.lr, or a config.json key path such as training.seed); writes groups.csv")
    return parser.parse_args(argv)


def main(argv: list) -> int:
    args = parse_args(argv)
    try:
        runs = load_runs(args.runs)
        baseline = None
        if args.baseline:
            same = [run for run in runs if os.path.realpath(run.path) == os.path.realpath(args.baseline)]
            baseline = same[0] if same else load_run(args.baseline)
            if not baseline.label:
                baseline.label = baseline.dir_name
            if not series(baseline, "loss")[0]:
                raise RunError(f"{args.baseline}: the baseline's log has no training loss")
        groups = group_runs(runs, args.group_by) if args.group_by else None
        plt = pyplot()
        os.makedirs(args.out, exist_ok=True)
        smooth = args.smooth or 1
        written = [plot_loss(plt, runs, args.out, args.log_x, smooth, groups),
                   plot_val_loss(plt, runs, args.out, args.log_x, groups),
                   plot_update_quality(plt, runs, args.out),
                   plot_lr(plt, runs, args.out)]
        if baseline:
            written += plot_loss_difference(plt, runs, baseline, args.out, args.log_x,
                                            args.smooth or DEFAULT_DIFF_SMOOTH, groups)
        if groups:
            written.append(write_group_table(groups, args.out))
        header = SUMMARY_HEADER + ([BASELINE_COLUMN] if baseline else [])
        table = markdown_table(header, [summary_row(run, baseline) for run in runs])
        summary_path = os.path.join(args.out, "summary.md")
        with open(summary_path, "w", encoding="utf-8") as f:
            f.write(table)
    except (RunError, OSError) as e:
        print(f"plot_runs.py: error: {e}", file=sys.stderr)
        return 1
    try:
        print(table)
    except BrokenPipeError:  # e.g. piped into head
        return 0
    if written[1] is None:
        print("note: no validation loss in the logs: val_loss.png not written")
    if written[2] is None:
        print("note: no update-quality metrics in the logs (set metrics.every): update_quality.png not written")
    print("wrote " + ", ".join(path for path in written + [summary_path] if path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
