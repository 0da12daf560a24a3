# Sourced by bench/bench.sh and bench/profile_step.sh (from the repository root): token shards for GPT-2 124M
# on the GPU. choose_gpu_data sets train and val (glob patterns for data.train, data.val) and data (what they
# are, for the report).
# The model needs tokens below 50257. The byte-level fortunes shards qualify; on a machine without the
# fortunes package, uniformly random tokens (throughput does not depend on the token values).
choose_gpu_data() {
  if [ -f data/fortunes/train_000000.bin ] || python3 scripts/prepare_data.py >/dev/null 2>&1; then
    train="data/fortunes/train_*.bin" val="data/fortunes/val_*.bin"
    data="data/fortunes (byte-level fortunes text)"
  else
    [ -f data/synthetic/train_000000.bin ] || python3 scripts/synthetic_shard.py --out data/synthetic --vocab 50257 >/dev/null
    train="data/synthetic/train_*.bin" val="data/synthetic/val_*.bin"
    data="data/synthetic (uniformly random tokens below 50257, scripts/synthetic_shard.py; no fortunes corpus here)"
  fi
}
