# Shared set-up of the end-to-end tests: a temp dir, small data prepared from the fortunes corpus, a tiny
# config, and helpers to read log.jsonl. Sourced by tests/test_*.sh.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The CPU end-to-end tests run it with --device cpu: on a machine with a GPU, --device auto would train there.
train_gpt="$root/train_gpt"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# Idle OpenMP threads sleep instead of spinning: on a busy machine spinning made short runs several times
# slower (a 30-step run: 2.6 s passive, 11.6 s spinning, at a load of 5 on 2 cores).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

fail() { echo "FAIL: $*" >&2; exit 1; }

# Byte-level shards of the fortunes corpus (the test suite's fixed small corpus).
prepare_test_data() {
  python3 "$root/scripts/prepare_data.py" --out "$tmp/data" --seed 7 >/dev/null
}

# A model small enough for many short runs: 2 layers, 2 heads, 64 channels.
write_tiny_config() {
  cat > "$tmp/tiny.json" <<JSON
{
  "model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "vocab_size": 257},
  "data": {"train": "$tmp/data/train_*.bin", "val": "$tmp/data/val_*.bin", "tokenizer": "$tmp/data/tokenizer.bin"},
  "training": {"batch_size": 8, "seq_len": 64, "max_steps": 20, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 5,
               "eval_every": 10, "eval_batches": 2, "sample_every": 0, "sample_tokens": 16, "seed": 42},
  "precision": {"policy": "fp32"},
  "output": {"dir": "$tmp/run"}
}
JSON
}

# The losses of a run's log.jsonl, one per step, exactly as written (the step-0 evaluation has none).
# (SIGPIPE kills it quietly when a reader such as head stops early.)
losses() {
  python3 -c 'import json, signal, sys
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
for line in open(sys.argv[1]):
    record = json.loads(line)
    if "loss" in record: print(repr(record["loss"]))' "$1/log.jsonl"
}
