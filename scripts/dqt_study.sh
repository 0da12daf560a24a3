#!/usr/bin/env bash
# The DQT study (docs/dqt-study.md): `mixed`, `bitnet`, and DQT on the ternary, int3, int4 and int8 grids,
# each with the embeddings on the grid and in fp32 (and ternary and int8 with the DQT code's per-step scale,
# precision.dqt_rescale = 1), at three peak learning rates and three seeds, on the
# stability study's tiny model (configs/sweeps/bitwidth_base.json, policy overridden per variant).
#
#   scripts/dqt_study.sh [OUT]          (default OUT: runs/dqt_study; about 25 minutes on two cores)
#
# Each variant is one scripts/sweep.py run in OUT/VARIANT (rerunning skips what is done); OUT/summary.md,
# OUT/summary.csv and the plot OUT/summary.png hold the final validation loss per variant and learning rate (mean ± population std
# over the seeds, and how many runs diverged) and the bytes per parameter of weights + gradients + optimizer
# state over the whole model (the embeddings at their own rate). STEPS, LRS and SEEDS (space-separated) narrow it for a smoke test; TRAIN_GPT names the program.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/dqt_study}
steps=${STEPS:-200}
read -r -a lrs <<<"${LRS:-1e-3 3e-3 1e-2}"
read -r -a seeds <<<"${SEEDS:-1 2 3}"
base=configs/sweeps/bitwidth_base.json

variant() {  # variant NAME POLICY [--set ...]
  local name=$1 policy=$2
  shift 2
  python3 scripts/sweep.py --train-gpt "${TRAIN_GPT:-./train_gpt}" --base "$base" --out "$out/$name" --policies "$policy" --lrs "${lrs[@]}" \
    --seeds "${seeds[@]}" --steps "$steps" --set training.eval_every=50 "$@" >"$out/$name.txt"
  echo "$name: $(tail -n 1 "$out/$name.txt")"
}

mkdir -p "$out"
variant mixed mixed
variant bitnet bitnet
for weights in ternary int3 int4 int8; do
  for embeddings in grid fp32; do
    variant "dqt_${weights}_emb_${embeddings}" dqt_int8 --set precision.weights="$weights" \
      --set precision.embeddings="$embeddings"
  done
done
# The DQT code's own scale rule (recomputed from the weights before every update) for two widths.
for weights in ternary int8; do
  variant "dqt_${weights}_emb_fp32_rescale" dqt_int8 --set precision.weights="$weights" \
    --set precision.embeddings=fp32 --set precision.dqt_rescale=1
done

python3 - "$out" <<'PY'
import csv, glob, json, math, os, sys
out = sys.argv[1]
rows = []
for variant_dir in sorted(d for d in glob.glob(os.path.join(out, "*")) if os.path.isdir(d)):
    results = os.path.join(variant_dir, "results.csv")
    if not os.path.exists(results):
        continue
    points = list(csv.DictReader(open(results)))
    summaries = [os.path.join(variant_dir, "points", p["name"], "summary.json") for p in points]
    done = [s for s in summaries if os.path.exists(s)]
    bytes_per_param = ""
    if done:  # the embeddings (wte over the padded vocab, wpe) at their own rate, the rest at the weights'
        summary = json.load(open(done[0]))
        model = json.load(open(os.path.join(os.path.dirname(done[0]), "config.json")))["model"]
        embeddings = ((model["vocab_size"] + 127) // 128 * 128 + model["block_size"]) * model["n_embd"]
        total = summary["num_params"]
        bytes_per_param = round((embeddings * summary["embedding_bytes_per_param"]
                                 + (total - embeddings) * summary["bytes_per_param"]) / total, 2)
    for lr in sorted({p["lr"] for p in points}, key=float):
        at_lr = [p for p in points if p["lr"] == lr]
        losses = [float(p["final_val_loss"]) for p in at_lr if p["final_val_loss"] and p["diverged"] != "True"]
        mean = sum(losses) / len(losses) if losses else math.nan
        std = math.sqrt(sum((x - mean) ** 2 for x in losses) / len(losses)) if losses else math.nan
        rows.append({"variant": os.path.basename(variant_dir), "lr": lr, "runs": len(at_lr),
                     "diverged": sum(p["diverged"] == "True" for p in at_lr), "mean_val_loss": f"{mean:.4f}",
                     "std_val_loss": f"{std:.4f}", "bytes_per_param": bytes_per_param})
with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write("| variant | lr | final val loss (mean ± std) | diverged | bytes/param |\n| --- | --- | --- | --- | --- |\n")
    for r in rows:
        f.write(f"| `{r['variant']}` | {r['lr']} | {r['mean_val_loss']} ± {r['std_val_loss']} | "
                f"{r['diverged']}/{r['runs']} | {r['bytes_per_param']} |\n")
print(open(os.path.join(out, "summary.md")).read())

# summary.png: final validation loss against the learning rate, mean ± std over the seeds, one line a variant.
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(9, 5.5))
variants = sorted({r["variant"] for r in rows}, key=lambda v: (("grid" in v), v))
colors = plt.get_cmap("tab20").colors
for i, variant in enumerate(variants):
    at = [r for r in rows if r["variant"] == variant]
    lrs = [float(r["lr"]) for r in at]
    means = [float(r["mean_val_loss"]) for r in at]
    stds = [float(r["std_val_loss"]) for r in at]
    style = "--" if "emb_grid" in variant else ":" if "rescale" in variant else "-"
    ax.errorbar(lrs, means, yerr=stds, label=variant, linestyle=style, marker="o", capsize=3,
                color=colors[i % len(colors)])
ax.set_xscale("log")
ax.set_xlabel("peak learning rate")
ax.set_ylabel("final validation loss (nats per byte)")
ax.axhline(3.31, color="grey", linewidth=0.8)
ax.text(min(float(r["lr"]) for r in rows), 3.32, "unigram entropy", color="grey", fontsize=8)
ax.legend(fontsize=7, ncol=2)
ax.set_title("DQT study: mean ± std over 3 seeds, 200 steps")
fig.tight_layout()
fig.savefig(os.path.join(out, "summary.png"), dpi=110)
print("wrote", os.path.join(out, "summary.png"))
PY
