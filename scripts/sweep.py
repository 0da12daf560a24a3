#!/usr/bin/env python3
"""Runs train_gpt over a grid of policies, seeds, learning rates and matmul formats, and judges stability.

    python3 scripts/sweep.py --base CONFIG --out DIR [--grid FILE] [--policies P ...] [--seeds S ...]
                             [--lrs LR ...] [--matmuls FMT ...] [--matmul-rounding MODE]
                             [--matmul-sites matmul|attention|lm_head ...] [--steps N]
                             [--divergence-margin M] [--divergence-window K] [--stall-above LOSS]
                             [--mpirun N] [--dry-run] [--set SECTION.KEY=VALUE ...]

Every point of the grid (policies x matmul formats x learning rates x seeds) gets its own directory
DIR/points/NAME with the point's resolved config.json; train_gpt runs there, one point after another (each
under `mpirun -np N` with --mpirun N), and leaves its usual outputs beside it, plus stdout.txt, stderr.txt
and result.json (how the sweep judged the run, and how long it took). Points that are done are skipped,
so rerunning the same command continues an interrupted sweep. After the runs:
  DIR/results.csv, DIR/results.md   one row per point: final (validation) loss, divergence and its step
  DIR/heatmap_<policy>[_<matmul>].png   per policy (and matmul format): learning rate x seed, cell text =
                                    final validation loss or "div" (the stability view of arXiv 2405.18710)

Divergence (a run counts as diverged when):
  - its loss becomes NaN or Inf: train_gpt stops it (exit status 3) naming the step; or
  - its loss stays above the first step's loss by --divergence-margin: while it runs, the sweep polls
    log.jsonl and stops it (SIGTERM) once the last --divergence-window losses all exceed first + margin;
    after it ends, the mean loss of its last 10% of steps must not exceed first + margin.
The step reported for the margin rule is where the final stretch of losses above first + margin began.
Each point's config sets training.divergence_margin = 0 (train_gpt's own margin stop is off: the sweep's
rules judge) and output.overwrite = 1 (the sweep reruns a point that did not finish in its directory).

Stalled (with --stall-above LOSS): a point that finished without diverging but whose final validation loss
is above LOSS, e.g. the unigram entropy of the data, the loss of a model that learnt no context.

A point's matmul format goes to the products --matmul-sites names (precision.matmul, the four block linears,
by default; precision.attention and precision.lm_head for the attention products and the LM head).

A grid file (--grid, JSON) may hold any of: "policies", "seeds", "lrs", "matmuls", "matmul_rounding",
"matmul_sites", "stall_above", "steps", "divergence_margin", "divergence_window" and "set" (an object of
"section.key": value); the command line's options win over it. An axis that neither gives keeps the base config's value.
"""

from __future__ import annotations

import argparse
import collections
import copy
import csv
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from plot_runs import positive_int  # the same argument check as plot_runs.py's

from plot_runs import is_finite_number, pyplot, read_json_file, read_log, RunError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TRAIN_GPT = os.path.join(REPO_ROOT, "train_gpt")
DEFAULT_MARGIN = 0.5
DEFAULT_WINDOW = 20
TAIL_FRACTION = 0.1  # the post-run rule averages the last 10% of steps
MATMUL_ROUNDINGS = ("nearest", "toward_zero", "bf16_truncate")  # precision.matmul_rounding (src/config.c)
GRID_FILE_KEYS = {"policies", "seeds", "lrs", "matmuls", "matmul_rounding", "matmul_sites", "steps",
                  "divergence_margin", "divergence_window", "stall_above", "set"}
MATMUL_SITES = ("matmul", "attention", "lm_head")  # precision axes: the block linears, attention, LM head
# Config keys the sweep sets itself, and the option to use instead of --set for each.
AXIS_KEYS = {"precision.policy": "--policies", "training.seed": "--seeds", "training.lr": "--lrs",
             "precision.matmul": "--matmuls", "precision.matmul_rounding": "--matmul-rounding",
             "training.max_steps": "--steps", "precision.attention": "--matmuls with --matmul-sites",
             "precision.lm_head": "--matmuls with --matmul-sites"}
# train_gpt stops a diverged run itself with this exit status and a message "step N: WHY: the run diverged".
TRAIN_GPT_DIVERGED = 3
DIVERGED_MESSAGE = re.compile(r"step (\d+): (.*?): the run diverged")
CSV_COLUMNS = ["name", "policy", "matmul", "matmul_rounding", "lr", "seed", "status", "diverged",
               "diverged_step", "reason", "steps", "final_loss", "final_val_loss", "best_val_loss",
               "seconds", "tokens_per_s"]


class SweepError(Exception):
    pass


@dataclass
class Point:
    policy: str | None
    matmul: str | None
    lr: float | None
    seed: int | None

    @property
    def name(self) -> str:
        parts = [self.policy or "default"]
        if self.matmul is not None:
            parts.append(self.matmul)
        parts.append("lr" + ("default" if self.lr is None else f"{self.lr:g}".replace("+", "")))
        parts.append("seed" + ("default" if self.seed is None else str(self.seed)))
        return re.sub(r"[^A-Za-z0-9._+-]", "-", "_".join(parts))

    @property
    def group(self) -> str:
        """The heatmap this point belongs to: its policy, and its matmul format when the grid has one."""
        policy = self.policy or "default"
        return policy if self.matmul is None else f"{policy}_{self.matmul}"


@dataclass
class Settings:
    """Everything that decides the sweep, merged from the grid file and the command line."""
    base: dict               # the base config with every --set and the grid file's "set" applied
    points: list
    matmul_rounding: str | None
    steps: int | None
    margin: float
    window: int
    matmul_sites: list       # the precision axes a point's matmul format sets: matmul, attention, lm_head
    stall_above: float | None  # a finished run whose final val loss is above this has stalled


# ---- the grid ----

def parse_value(text: str):
    """A --set value as JSON when it reads as JSON (numbers, true, false, null, "quoted"), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def check_key(key: str, where: str) -> str:
    section, dot, name = key.partition(".")
    if not dot or not section or not name:
        raise SweepError(f"{where}: {key!r} is not SECTION.KEY (e.g. training.eval_every)")
    return key


def parse_set(text: str) -> tuple:
    key, sep, value = text.partition("=")
    if not sep:
        raise SweepError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. --set training.eval_every=50")
    return check_key(key, "--set"), parse_value(value)


def set_key(config: dict, key: str, value) -> None:
    section, _, name = key.partition(".")
    if not isinstance(config.setdefault(section, {}), dict):
        raise SweepError(f"the base config's {section!r} is not an object")
    config[section][name] = value


def get_key(config: dict, key: str):
    section, _, name = key.partition(".")
    return config.get(section, {}).get(name)


def find_config(name: str) -> str:
    """name, or configs/name when name is not a file (as train_gpt looks configs up)."""
    if os.path.isfile(name):
        return name
    in_configs = os.path.join(REPO_ROOT, "configs", name)
    if os.path.isfile(in_configs):
        return in_configs
    raise SweepError(f"{name}: no such file (nor {in_configs})")


def load_json_object(path: str, what: str) -> dict:
    try:
        value = read_json_file(find_config(path))
    except RunError as e:
        raise SweepError(f"{what}: {e}") from e
    if not isinstance(value, dict):
        raise SweepError(f"{what} {path}: expected a JSON object")
    return value


def as_list(value, name: str, kind) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SweepError(f"{name}: the list is empty")
    try:
        converted = [kind(v) for v in values]
    except (TypeError, ValueError):
        raise SweepError(f"{name}: {values!r} are not all {kind.__name__} values") from None
    if len(set(converted)) != len(converted):
        raise SweepError(f"{name}: {values!r} has a value twice")
    return converted


def axis_values(command_line, grid: dict, grid_key: str, config: dict, config_key: str, kind) -> list:
    """An axis's values: from the command line, else the grid file, else the base config's one value
    (None: train_gpt's default)."""
    if command_line is not None:
        return as_list(command_line, "--" + grid_key, kind)
    if grid_key in grid:
        return as_list(grid[grid_key], f"the grid file's {grid_key!r}", kind)
    value = get_key(config, config_key)
    return [None if value is None else kind(value)]


def check_overrides(overrides: dict, explicit_axes: set) -> None:
    if "output.dir" in overrides:
        raise SweepError("output.dir cannot be set: the sweep sets each point's (DIR/points/NAME)")
    for key in overrides:
        if key in explicit_axes:
            raise SweepError(f"{key} is both set (--set, or the grid file's \"set\") and swept: give its "
                             f"values with {AXIS_KEYS[key]} (or the grid file) only")


def load_grid_file(path: str | None) -> dict:
    if not path:
        return {}
    grid = load_json_object(path, "--grid")
    unknown = set(grid) - GRID_FILE_KEYS
    if unknown:
        raise SweepError(f"--grid {path}: unknown keys {sorted(unknown)} (known: {sorted(GRID_FILE_KEYS)})")
    if not isinstance(grid.get("set", {}), dict):
        raise SweepError(f"--grid {path}: \"set\" must be an object of \"section.key\": value")
    return grid


def collect_overrides(grid: dict, set_options: list | None) -> dict:
    """The grid file's "set", then the command line's --set (which wins)."""
    overrides = {check_key(key, "the grid file's \"set\""): value for key, value in grid.get("set", {}).items()}
    for text in set_options or []:
        key, value = parse_set(text)
        overrides[key] = value
    return overrides


def swept_keys(args: argparse.Namespace, grid: dict) -> set:
    """The config keys that the command line or the grid file sets for every point."""
    options = {"precision.policy": (args.policies, "policies"), "training.seed": (args.seeds, "seeds"),
               "training.lr": (args.lrs, "lrs"), "precision.matmul": (args.matmuls, "matmuls"),
               "precision.matmul_rounding": (args.matmul_rounding, "matmul_rounding"),
               "training.max_steps": (args.steps, "steps")}
    keys = {key for key, (option, grid_key) in options.items() if option is not None or grid_key in grid}
    sites = pick(args.matmul_sites, grid.get("matmul_sites"), [])
    if "precision.matmul" in keys and isinstance(sites, list):
        keys |= {f"precision.{site}" for site in sites if site in MATMUL_SITES}
    return keys


def grid_points(args: argparse.Namespace, grid: dict, config: dict) -> list:
    policies = axis_values(args.policies, grid, "policies", config, "precision.policy", str)
    seeds = axis_values(args.seeds, grid, "seeds", config, "training.seed", int)
    lrs = axis_values(args.lrs, grid, "lrs", config, "training.lr", float)
    if args.matmuls is not None or "matmuls" in grid:
        matmuls = axis_values(args.matmuls, grid, "matmuls", config, "precision.matmul", str)
    else:
        matmuls = [None]  # the base config's matmul (if any) stays in the config, not in the names
    points = [Point(policy, matmul, lr, seed)
              for policy, matmul, lr, seed in itertools.product(policies, matmuls, lrs, seeds)]
    names = collections.Counter(point.name for point in points)
    clashes = [name for name, count in names.items() if count > 1]
    if clashes:
        raise SweepError(f"two grid points would share the directory name {clashes[0]} (learning rates that "
                         "differ only past 6 significant digits?)")
    return points


def build_settings(args: argparse.Namespace) -> Settings:
    grid = load_grid_file(args.grid)
    overrides = collect_overrides(grid, args.set)
    check_overrides(overrides, swept_keys(args, grid))
    config = copy.deepcopy(load_json_object(args.base, "--base"))
    for key, value in overrides.items():
        set_key(config, key, value)

    rounding = pick(args.matmul_rounding, grid.get("matmul_rounding"))
    steps = pick(args.steps, grid.get("steps"))
    margin = pick(args.divergence_margin, grid.get("divergence_margin"), DEFAULT_MARGIN)
    window = pick(args.divergence_window, grid.get("divergence_window"), DEFAULT_WINDOW)
    if rounding not in (None, *MATMUL_ROUNDINGS):
        raise SweepError(f"matmul_rounding {rounding!r}: expected one of {', '.join(MATMUL_ROUNDINGS)}")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise SweepError(f"steps {steps!r}: expected a positive integer")
    if not is_finite_number(margin) or margin < 0:
        raise SweepError(f"divergence margin {margin!r}: expected a number >= 0")
    if not isinstance(window, int) or window < 1:
        raise SweepError(f"divergence window {window!r}: expected a positive integer")
    sites = pick(args.matmul_sites, grid.get("matmul_sites"), ["matmul"])
    if not isinstance(sites, list) or not sites or any(site not in MATMUL_SITES for site in sites):
        raise SweepError(f"matmul_sites {sites!r}: expected a list of {', '.join(MATMUL_SITES)}")
    stall_above = pick(args.stall_above, grid.get("stall_above"))
    if stall_above is not None and not is_finite_number(stall_above):
        raise SweepError(f"stall_above {stall_above!r}: expected a number")
    return Settings(base=config, points=grid_points(args, grid, config), matmul_rounding=rounding,
                    steps=steps, margin=float(margin), window=window, matmul_sites=sites,
                    stall_above=None if stall_above is None else float(stall_above))


def pick(*choices):
    """The first choice that is not None (None when all are)."""
    return next((choice for choice in choices if choice is not None), None)


def point_config(settings: Settings, point: Point, out_dir: str) -> dict:
    config = copy.deepcopy(settings.base)
    formats = [(f"precision.{site}", point.matmul) for site in settings.matmul_sites]
    for key, value in formats + [("precision.policy", point.policy),
                                 ("precision.matmul_rounding", settings.matmul_rounding), ("training.lr", point.lr),
                                 ("training.seed", point.seed), ("training.max_steps", settings.steps)]:
        if value is not None:
            set_key(config, key, value)
    set_key(config, "output.dir", point_dir(out_dir, point))
    # The point's directory holds the config.json the sweep writes: train_gpt may overwrite it. The sweep
    # judges divergence itself, so train_gpt's own stop on a margin is off (a non-finite loss still stops it).
    set_key(config, "output.overwrite", 1)
    set_key(config, "training.divergence_margin", 0)
    return config


def point_dir(out_dir: str, point: Point) -> str:
    return os.path.join(out_dir, "points", point.name)


def describe(point: Point) -> str:
    """policy=... [matmul=...] lr=... seed=... ("default" where the base config's value applies)."""
    fields = {"policy": point.policy, "matmul": point.matmul,
              "lr": None if point.lr is None else f"{point.lr:g}", "seed": point.seed}
    if point.matmul is None:
        del fields["matmul"]
    return "  ".join(f"{key}={'default' if value is None else value}" for key, value in fields.items())


# ---- resolving and checking configs with train_gpt ----

def train_gpt_command(mpirun_ranks: int | None, train_gpt: str) -> list:
    if mpirun_ranks is None:
        return [train_gpt]
    return ["mpirun", "-np", str(mpirun_ranks), train_gpt]


def resolve_config(train_gpt: str, config: dict) -> dict:
    """The config as train_gpt resolves it (every key, defaults filled in); SweepError when refused."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config, f, indent=2)
        path = f.name
    try:
        done = subprocess.run([train_gpt, "--config", path, "--print-config"], capture_output=True, text=True)
    finally:
        os.unlink(path)
    if done.returncode != 0:
        raise SweepError(done.stderr.strip() or f"train_gpt --print-config exited with {done.returncode}")
    return json.loads(done.stdout)


def differing_keys(old: dict, new: dict) -> list:
    """The section.key names whose values differ between two resolved configs (keys in both only)."""
    keys = []
    for section in sorted(set(old) & set(new)):
        if isinstance(old[section], dict) and isinstance(new[section], dict):
            keys += [f"{section}.{k}" for k in sorted(set(old[section]) & set(new[section]))
                     if old[section][k] != new[section][k]]
    return keys


# ---- divergence ----

def losses_of(log: list) -> tuple:
    steps = [record["step"] for record in log if "loss" in record]
    losses = [record["loss"] if is_finite_number(record["loss"]) else math.inf
              for record in log if "loss" in record]
    return steps, losses


def streak_start(steps: list, losses: list, threshold: float) -> int | None:
    """The step where the final run of losses above threshold began (None: the last loss is not above)."""
    i = len(losses)
    while i > 0 and losses[i - 1] > threshold:
        i -= 1
    return steps[i] if i < len(losses) else None


def margin_divergence(log: list, margin: float) -> int | None:
    """The post-run rule: the step at which the run diverged when the mean loss of its last 10% of steps
    exceeds the first step's loss + margin, else None."""
    steps, losses = losses_of(log)
    if not losses:
        return None
    threshold = losses[0] + margin
    tail = max(1, math.ceil(TAIL_FRACTION * len(losses)))
    if sum(losses[-tail:]) / tail <= threshold:
        return None
    start = streak_start(steps, losses, threshold)
    return start if start is not None else steps[-tail]


class LogWatcher:
    """Follows a growing log.jsonl and tells when the last `window` losses all exceed first + margin."""

    def __init__(self, path: str, margin: float, window: int):
        self.path, self.margin, self.window = path, margin, window
        self.offset, self.partial = 0, ""
        self.threshold = None      # the first loss + margin
        self.streak_start = None   # the step where the current run of losses above threshold began
        self.streak_length = 0

    def read_new_records(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                f.seek(self.offset)
                text = f.read()
                self.offset = f.tell()
        except FileNotFoundError:
            return
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()  # an incomplete last line waits for the next read
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "loss" in record:
                self.add(record["step"], record["loss"] if is_finite_number(record["loss"]) else math.inf)

    def add(self, step: int, loss: float) -> None:
        if self.threshold is None:
            self.threshold = loss + self.margin
        if loss > self.threshold:
            self.streak_start = self.streak_start if self.streak_length else step
            self.streak_length += 1
        else:
            self.streak_length = 0

    def diverged_step(self) -> int | None:
        return self.streak_start if self.streak_length >= self.window else None


# ---- running points ----

def point_is_done(directory: str) -> bool:
    """Finished or diverged (summary.json, unless interrupted), or stopped as diverged by an earlier sweep
    (result.json says so)."""
    summary = read_json_file(os.path.join(directory, "summary.json"))
    if summary is not None and not summary.get("interrupted"):
        return True
    result = read_json_file(os.path.join(directory, "result.json"))
    return bool(result) and result.get("status") == "diverged"


def remove_stale_outputs(directory: str) -> None:
    for name in ["log.jsonl", "summary.json", "result.json", "samples.txt", "model.bin", "stdout.txt",
                 "stderr.txt"]:
        path = os.path.join(directory, name)
        if os.path.exists(path):
            os.remove(path)
    shutil.rmtree(os.path.join(directory, "checkpoints"), ignore_errors=True)


def run_point(command: list, directory: str, margin: float, window: int, poll_s: float) -> dict:
    """Runs train_gpt on DIRECTORY/config.json, stopping it early on margin divergence; returns the
    result record (also written to DIRECTORY/result.json)."""
    remove_stale_outputs(directory)
    watcher = LogWatcher(os.path.join(directory, "log.jsonl"), margin, window)
    start = time.monotonic()
    stopped_at = None
    with open(os.path.join(directory, "stdout.txt"), "w") as out, \
            open(os.path.join(directory, "stderr.txt"), "w") as err:
        process = subprocess.Popen(command + ["--config", os.path.join(directory, "config.json")],
                                   stdout=out, stderr=err)
        try:
            while not exited(process, poll_s):
                watcher.read_new_records()
                stopped_at = watcher.diverged_step()
                if stopped_at is not None:
                    process.send_signal(signal.SIGTERM)
                    process.wait()
                    break
        except BaseException:
            process.terminate()
            process.wait()
            raise
    seconds = time.monotonic() - start
    with open(os.path.join(directory, "stderr.txt"), encoding="utf-8", errors="replace") as f:
        stderr = f.read()
    log = read_log(os.path.join(directory, "log.jsonl"))
    result = judge_run(log, process.returncode, stderr, stopped_at, margin, window)
    result["seconds"] = round(seconds, 3)
    with open(os.path.join(directory, "result.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    return result


def exited(process: subprocess.Popen, timeout_s: float) -> bool:
    """Waits up to timeout_s for the process; True when it has ended."""
    try:
        process.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        return False


def judge_run(log: list, exit_code: int, stderr: str, stopped_at: int | None, margin: float,
              window: int) -> dict:
    """How a run ended: finished, diverged (with the step and the reason) or failed (another error)."""
    if stopped_at is not None:
        return diverged(stopped_at, f"the last {window} losses exceeded the first + {margin:g}: stopped",
                        exit_code)
    if exit_code != 0:
        match = DIVERGED_MESSAGE.search(stderr)
        if exit_code == TRAIN_GPT_DIVERGED and match:
            return diverged(int(match.group(1)), match.group(2), exit_code)
        lines = [line for line in stderr.splitlines() if line.strip()]
        return {"status": "failed", "diverged": False, "diverged_step": None, "exit_code": exit_code,
                "reason": lines[-1] if lines else f"train_gpt exited with {exit_code}"}
    step = margin_divergence(log, margin)
    if step is not None:
        return diverged(step, f"mean loss of the last 10% of steps above the first + {margin:g}", exit_code)
    return {"status": "finished", "diverged": False, "diverged_step": None, "exit_code": 0, "reason": ""}


def diverged(step: int, reason: str, exit_code: int) -> dict:
    return {"status": "diverged", "diverged": True, "diverged_step": step, "exit_code": exit_code,
            "reason": reason}


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def recorded_seconds(directory: str) -> float | None:
    result = read_json_file(os.path.join(directory, "result.json")) or {}
    if is_finite_number(result.get("seconds")):
        return result["seconds"]
    summary = read_json_file(os.path.join(directory, "summary.json")) or {}
    return summary.get("seconds") if is_finite_number(summary.get("seconds")) else None


def prepare_points(settings: Settings, out_dir: str, train_gpt: str) -> list:
    """Resolves every point's config with train_gpt (nothing runs if one is refused), writes the configs
    of the points still to run, and returns (point, done) pairs."""
    prepared, problems = [], []
    for point in settings.points:
        directory = point_dir(out_dir, point)
        try:
            resolved = resolve_config(train_gpt, point_config(settings, point, out_dir))
        except SweepError as e:
            problems.append(f"{point.name}: {e}")
            continue
        done = point_is_done(directory)
        if done:
            old = read_json_file(os.path.join(directory, "config.json")) or {}
            changed = differing_keys(old, resolved)
            if changed:
                problems.append(f"{point.name}: finished with another config (differs in {', '.join(changed)}); "
                                f"delete {directory} to run it again, or use another --out")
        prepared.append((point, done, resolved))
    if problems:
        raise SweepError("nothing was run:\n  " + "\n  ".join(problems))
    os.makedirs(out_dir, exist_ok=True)
    for point, done, resolved in prepared:
        if not done:
            os.makedirs(point_dir(out_dir, point), exist_ok=True)
            with open(os.path.join(point_dir(out_dir, point), "config.json"), "w", encoding="utf-8") as f:
                json.dump(resolved, f, indent=2)
                f.write("\n")
    return [(point, done) for point, done, _ in prepared]


def run_sweep(settings: Settings, out_dir: str, command: list, train_gpt: str, poll_s: float) -> None:
    prepared = prepare_points(settings, out_dir, train_gpt)
    total = len(prepared)
    durations = [s for s in (recorded_seconds(point_dir(out_dir, p)) for p, done in prepared if done) if s]
    left = sum(1 for _, done in prepared if not done)
    print(f"sweep: {total} points, {total - left} done, {left} to run; outputs in {out_dir}", flush=True)
    for index, (point, done) in enumerate(prepared, start=1):
        where = f"[{index}/{total}] {point.name}"
        if done:
            print(f"{where}: skip (done)", flush=True)
            continue
        print(f"{where}: running ({describe(point)})", flush=True)
        result = run_point(command, point_dir(out_dir, point), settings.margin, settings.window, poll_s)
        durations.append(result["seconds"])
        left -= 1
        eta = format_duration(left * sum(durations) / len(durations))
        print(f"{where}: {outcome_text(point_dir(out_dir, point), result)} in {result['seconds']:.1f}s | "
              f"{left} left, ETA {eta}", flush=True)


def outcome_text(directory: str, result: dict) -> str:
    if result["status"] == "diverged":
        return f"diverged at step {result['diverged_step']} ({result['reason']})"
    if result["status"] == "failed":
        return f"FAILED: {result['reason']} (see {directory}/stderr.txt)"
    summary = read_json_file(os.path.join(directory, "summary.json")) or {}
    value = summary.get("final_val_loss")
    return f"finished, final val loss {value:.4f}" if is_finite_number(value) else "finished"


# ---- results ----

def collect_result(settings: Settings, out_dir: str, point: Point) -> dict:
    directory = point_dir(out_dir, point)
    summary = read_json_file(os.path.join(directory, "summary.json"))
    recorded = read_json_file(os.path.join(directory, "result.json")) or {}
    log = read_log(os.path.join(directory, "log.jsonl"))
    row = {"name": point.name, "policy": point.policy or "", "matmul": point.matmul or "",
           "matmul_rounding": settings.matmul_rounding or "", "lr": "" if point.lr is None else f"{point.lr:g}",
           "seed": "" if point.seed is None else point.seed, "steps": log[-1]["step"] if log else 0,
           "seconds": recorded.get("seconds", "")}
    if summary is not None and not summary.get("diverged") and not summary.get("interrupted"):
        # a finished run is judged again, under this sweep's margin
        judged = judge_run(log, 0, "", None, settings.margin, settings.window)
    elif recorded:
        judged = recorded
    else:
        judged = {"status": "pending", "diverged": False, "diverged_step": None, "reason": "not run yet"}
    row.update(status=judged["status"], diverged=judged["diverged"], reason=judged.get("reason", ""),
               diverged_step="" if judged["diverged_step"] is None else judged["diverged_step"])
    summary = summary or {}
    for key, source in [("final_loss", "final_loss"), ("final_val_loss", "final_val_loss"),
                        ("best_val_loss", "best_val_loss"), ("tokens_per_s", "mean_tokens_per_s")]:
        row[key] = summary.get(source) if is_finite_number(summary.get(source)) else ""
    stalled = settings.stall_above is not None and row["status"] == "finished" and row["final_val_loss"] != ""
    if stalled and row["final_val_loss"] > settings.stall_above:
        row.update(status="stalled",
                   reason=f"final val loss {row['final_val_loss']:.4f} above stall_above {settings.stall_above:g}")
    return row


def write_csv(rows: list, path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def cell_text(row: dict) -> str:
    """What a heatmap cell or the markdown table shows for a point's outcome."""
    if row["diverged"]:
        return "div"
    if row["status"] == "stalled":
        return f"{row['final_val_loss']:.4f} (stall)"
    if row["status"] != "finished":
        return row["status"]
    return f"{row['final_val_loss']:.4f}" if row["final_val_loss"] != "" else "—"


def markdown_results(rows: list, settings: Settings) -> str:
    lines = ["# Sweep results\n",
             f"Divergence: NaN/Inf loss, or loss above the first step's + {settings.margin:g} (the last "
             f"{settings.window} steps while running, the mean of the last 10% after).\n",
             "| point | policy | matmul | lr | seed | final val loss | diverged | step | reason |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['name']} | {row['policy']} | {row['matmul'] or '—'} | {row['lr']} | {row['seed']} | "
                     f"{cell_text(row)} | {'yes' if row['diverged'] else 'no'} | {row['diverged_step']} | "
                     f"{row['reason']} |")
    lines += ["", "## Stability per group\n", "| group | points | diverged | mean final val loss (not diverged) |",
              "| --- | --- | --- | --- |"]
    for group, group_rows in grouped(rows, settings).items():
        values = [r["final_val_loss"] for r in group_rows if not r["diverged"] and r["final_val_loss"] != ""]
        mean = f"{sum(values) / len(values):.4f}" if values else "—"
        lines.append(f"| {group} | {len(group_rows)} | {sum(1 for r in group_rows if r['diverged'])} | {mean} |")
    return "\n".join(lines) + "\n"


def grouped(rows: list, settings: Settings) -> dict:
    groups = collections.OrderedDict()
    for point, row in zip(settings.points, rows):
        groups.setdefault(point.group, []).append(row)
    return groups


def plot_heatmaps(rows: list, settings: Settings, out_dir: str) -> list:
    """One heatmap per group over (learning rate x seed); returns the files written."""
    plt = pyplot()
    from matplotlib.patches import Rectangle
    values = [r["final_val_loss"] for r in rows if not r["diverged"] and r["final_val_loss"] != ""]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    colormap = plt.get_cmap("viridis_r").copy()
    colormap.set_bad("#e0e0e0")
    written = []
    for group, group_rows in grouped(rows, settings).items():
        lrs = sorted({r["lr"] for r in group_rows}, key=lambda lr: float(lr) if lr else 0.0)
        seeds = sorted({r["seed"] for r in group_rows}, key=lambda s: int(s) if s != "" else 0)
        grid = [[math.nan] * len(seeds) for _ in lrs]
        figure, axes = plt.subplots(figsize=(1.6 + 1.1 * len(seeds), 1.4 + 0.55 * len(lrs)))
        for row in group_rows:
            i, j = lrs.index(row["lr"]), seeds.index(row["seed"])
            if not row["diverged"] and row["final_val_loss"] != "":
                grid[i][j] = row["final_val_loss"]
        image = axes.imshow(grid, cmap=colormap, vmin=low, vmax=high if high > low else low + 1e-9,
                            aspect="auto")
        for row in group_rows:
            i, j = lrs.index(row["lr"]), seeds.index(row["seed"])
            if row["diverged"]:
                axes.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, color="#c0392b"))
            dark = row["diverged"] or (not math.isnan(grid[i][j]) and image.norm(grid[i][j]) > 0.6)
            axes.text(j, i, cell_text(row), ha="center", va="center", fontsize=9,
                      color="white" if dark else "black")
        axes.set_xticks(range(len(seeds)), [str(s) if s != "" else "default" for s in seeds])
        axes.set_yticks(range(len(lrs)), [lr or "default" for lr in lrs])
        axes.set(xlabel="seed", ylabel="learning rate")
        diverged_count = sum(1 for r in group_rows if r["diverged"])
        axes.set_title(f"{group}: final val loss ({diverged_count}/{len(group_rows)} diverged)", fontsize=10)
        figure.colorbar(image, ax=axes, label="final val loss")
        figure.tight_layout()
        path = os.path.join(out_dir, f"heatmap_{group}.png")
        figure.savefig(path, dpi=120)
        plt.close(figure)
        written.append(path)
    return written


def write_results(settings: Settings, out_dir: str) -> list:
    rows = [collect_result(settings, out_dir, point) for point in settings.points]
    write_csv(rows, os.path.join(out_dir, "results.csv"))
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(markdown_results(rows, settings))
    try:
        plot_heatmaps(rows, settings, out_dir)
    except RunError as e:
        print(f"note: no heatmaps: {e}", file=sys.stderr)
    return rows


# ---- command line ----

def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number > 0")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number >= 0")
    return value


def parse_args(argv: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run train_gpt over a grid (policies x matmul formats x learning rates x seeds), one "
                    "point after another, skipping points already done; then write results.csv, results.md "
                    "and per-policy (learning rate x seed) heatmaps of the final validation loss.",
        epilog="Divergence: a NaN/Inf loss (train_gpt stops), or a loss that stays above the first step's by "
               "--divergence-margin: the last --divergence-window losses of a running point (it is then "
               "stopped with SIGTERM), or the mean of the last 10% of steps after it ends. "
               "Example: python3 scripts/sweep.py --base configs/sweeps/bitwidth_base.json "
               "--grid configs/sweeps/bitwidth.json --out runs/bitwidth")
    parser.add_argument("--base", required=True, metavar="CONFIG",
                        help="the base train_gpt config (JSON; a name that is not a file is looked up in configs/)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the sweep's directory (points/, results)")
    parser.add_argument("--grid", metavar="FILE", help="a JSON grid file (e.g. configs/sweeps/bitwidth.json)")
    parser.add_argument("--policies", nargs="+", metavar="P", help="precision policies (precision.policy)")
    parser.add_argument("--seeds", nargs="+", metavar="S", help="seeds (training.seed)")
    parser.add_argument("--lrs", nargs="+", metavar="LR", help="peak learning rates (training.lr)")
    parser.add_argument("--matmuls", nargs="+", metavar="FMT",
                        help="matmul operand formats (precision.matmul: fp32, bf16, fp8 or eXmY)")
    parser.add_argument("--matmul-rounding", choices=MATMUL_ROUNDINGS,
                        help="precision.matmul_rounding for every point")
    parser.add_argument("--matmul-sites", nargs="+", choices=MATMUL_SITES,
                        help="the products a point's matmul format applies to (default: matmul, the four block "
                             "linears; add attention and lm_head for full coverage)")
    parser.add_argument("--stall-above", type=float, metavar="LOSS",
                        help="a finished point whose final validation loss is above LOSS counts as stalled "
                             "(e.g. the data's unigram entropy: the model learnt no context)")
    parser.add_argument("--steps", type=positive_int, metavar="N", help="training.max_steps for every point")
    parser.add_argument("--divergence-margin", type=non_negative_float, metavar="M",
                        help=f"a loss above the first step's by more than M counts as diverged "
                             f"(default {DEFAULT_MARGIN})")
    parser.add_argument("--divergence-window", type=positive_int, metavar="K",
                        help=f"stop a running point once its last K losses are all above first + M "
                             f"(default {DEFAULT_WINDOW})")
    parser.add_argument("--mpirun", type=positive_int, metavar="N", help="run each point under mpirun -np N")
    parser.add_argument("--train-gpt", default=DEFAULT_TRAIN_GPT, metavar="PATH",
                        help="the train_gpt program (default: the repository's)")
    parser.add_argument("--poll-seconds", type=positive_float, default=0.5, metavar="S",
                        help="how often a running point's log.jsonl is read (default %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="list the grid's points, one a line, and exit")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override a config key in every point (repeatable)")
    return parser.parse_args(argv)


def check_programs(args: argparse.Namespace) -> None:
    if not (os.path.isfile(args.train_gpt) and os.access(args.train_gpt, os.X_OK)):
        raise SweepError(f"{args.train_gpt}: no train_gpt program there (build it with make, or pass --train-gpt)")
    if args.mpirun is not None and shutil.which("mpirun") is None:
        raise SweepError("--mpirun: mpirun is not on the PATH")


def stop_on_sigterm(signum, frame):
    """SIGTERM ends the sweep like Ctrl-C: the running point is stopped too."""
    raise KeyboardInterrupt


def main(argv: list) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        settings = build_settings(args)
        if args.dry_run:
            try:
                for point in settings.points:
                    print(f"{point.name}  {describe(point)}")
                sys.stdout.flush()
            except BrokenPipeError:  # the reader stopped early (| head): not an error
                # Point stdout at /dev/null so that Python's flush at exit does not fail again.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 0
            count = len(settings.points)
            print(f"{count} grid point{'' if count == 1 else 's'}", file=sys.stderr)
            return 0
        check_programs(args)
        run_sweep(settings, args.out, train_gpt_command(args.mpirun, args.train_gpt), args.train_gpt,
                  args.poll_seconds)
        rows = write_results(settings, args.out)
    except (SweepError, RunError, OSError) as e:
        print(f"sweep.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nsweep.py: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    counts = collections.Counter(row["status"] for row in rows)
    print(f"sweep done: {counts['finished']} finished, {counts['diverged']} diverged, {counts['failed']} failed; "
          f"results in {os.path.join(args.out, 'results.md')}")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
