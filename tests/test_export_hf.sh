#!/usr/bin/env bash
# scripts/export_hf.py: model files written here byte by byte (version 3 fp32 and version 5 bf16, not by the
# code under test) and a train_gpt run directory export to safetensors whose tensors are exactly the file's,
# under GPT2LMHeadModel's names, transposed where Conv1D wants (in, out), wte cut to vocab_size rows and no
# separate lm_head; config.json has the right fields; bad input fails with one line. With transformers and
# torch installed, the exported model's logits are also compared with scripts/reference.py's forward.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
source "$(dirname "$0")/e2e_common.sh"
cd "$root"
python3 -c 'import numpy, safetensors' 2>/dev/null \
  || fail "numpy and safetensors are not installed (pip install -r requirements.txt)"

# Model files written directly: header of 256 int32, then the 16 tensors in llm.c order. The bf16 file's
# values are float32 with the low 16 bits cleared, so they are exactly its bf16 numbers; the arrays
# themselves are saved to expected.npz.
python3 - "$tmp" <<'PY' || fail "could not write the model files"
import sys
import numpy as np
tmp = sys.argv[1]
L, NH, C, T, V, Vp = 2, 2, 8, 16, 50, 128
shapes = [("wte", (Vp, C)), ("wpe", (T, C)), ("ln1w", (L, C)), ("ln1b", (L, C)), ("qkvw", (L, 3 * C, C)),
          ("qkvb", (L, 3 * C)), ("attprojw", (L, C, C)), ("attprojb", (L, C)), ("ln2w", (L, C)), ("ln2b", (L, C)),
          ("fcw", (L, 4 * C, C)), ("fcb", (L, 4 * C)), ("fcprojw", (L, C, 4 * C)), ("fcprojb", (L, C)),
          ("lnfw", (C,)), ("lnfb", (C,))]
rng = np.random.default_rng(5)
arrays = {name: rng.normal(0, 0.5, s).astype(np.float32) for name, s in shapes}
arrays = {name: (a.view(np.uint32) & 0xFFFF0000).view(np.float32) for name, a in arrays.items()}
np.savez(f"{tmp}/expected.npz", **arrays)
for version, suffix in ((3, "fp32"), (5, "bf16")):
    header = np.zeros(256, dtype="<i4")
    header[:8] = [20240326, version, T, V, L, NH, C, Vp]
    with open(f"{tmp}/model_{suffix}.bin", "wb") as f:
        f.write(header.tobytes())
        for name, _ in shapes:
            a = arrays[name].astype("<f4")
            f.write(a.tobytes() if version == 3 else (a.view("<u4") >> 16).astype("<u2").tobytes())
PY

check_export() {  # check_export OUT_DIR EXPECTED_NPZ L NH C T V EOT
  python3 - "$@" <<'PY'
import json, sys
import numpy as np
from safetensors.numpy import load_file
out, npz = sys.argv[1], sys.argv[2]
L, NH, C, T, V, eot = map(int, sys.argv[3:])
e = np.load(npz)
got = load_file(f"{out}/model.safetensors")
want = {"transformer.wte.weight": e["wte"][:V], "transformer.wpe.weight": e["wpe"],
        "transformer.ln_f.weight": e["lnfw"], "transformer.ln_f.bias": e["lnfb"]}
for l in range(L):
    h = f"transformer.h.{l}."
    want.update({h + "ln_1.weight": e["ln1w"][l], h + "ln_1.bias": e["ln1b"][l],
                 h + "attn.c_attn.weight": e["qkvw"][l].T, h + "attn.c_attn.bias": e["qkvb"][l],
                 h + "attn.c_proj.weight": e["attprojw"][l].T, h + "attn.c_proj.bias": e["attprojb"][l],
                 h + "ln_2.weight": e["ln2w"][l], h + "ln_2.bias": e["ln2b"][l],
                 h + "mlp.c_fc.weight": e["fcw"][l].T, h + "mlp.c_fc.bias": e["fcb"][l],
                 h + "mlp.c_proj.weight": e["fcprojw"][l].T, h + "mlp.c_proj.bias": e["fcprojb"][l]})
assert sorted(got) == sorted(want), set(got) ^ set(want)
for name, w in want.items():
    assert got[name].dtype == np.float32 and got[name].shape == w.shape, (name, got[name].shape, w.shape)
    assert np.array_equal(got[name], w), name
# Conv1D layout spelled out: c_attn.weight is (C, 3C) with [i, j] = qkvw[j, i]; c_fc (C, 4C); c_proj (4C, C).
assert got["transformer.h.0.attn.c_attn.weight"].shape == (C, 3 * C)
assert got["transformer.h.1.attn.c_attn.weight"][3, 20] == e["qkvw"][1][20, 3]
assert got["transformer.h.0.mlp.c_fc.weight"].shape == (C, 4 * C)
assert got["transformer.h.0.mlp.c_proj.weight"].shape == (4 * C, C)
config = json.load(open(f"{out}/config.json"))
expected = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": V, "n_positions": T,
            "n_embd": C, "n_layer": L, "n_head": NH, "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True, "bos_token_id": eot, "eos_token_id": eot,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
for key, value in expected.items():
    assert config.get(key) == value, (key, config.get(key), value)
print(f"{out}: {len(got)} tensors and config.json ok")
PY
}

for suffix in fp32 bf16; do
  python3 scripts/export_hf.py "$tmp/model_$suffix.bin" "$tmp/hf_$suffix" >"$tmp/out.txt" \
    || fail "export_hf.py failed on the $suffix file"
  grep -q "version $([ $suffix = fp32 ] && echo 3 || echo 5)" "$tmp/out.txt" || fail "summary: $(cat "$tmp/out.txt")"
  check_export "$tmp/hf_$suffix" "$tmp/expected.npz" 2 2 8 16 50 49 || fail "$suffix export"
done
python3 scripts/export_hf.py "$tmp/model_fp32.bin" "$tmp/hf_eot" --eot-id 7 >/dev/null || fail "--eot-id 7"
check_export "$tmp/hf_eot" "$tmp/expected.npz" 2 2 8 16 50 7 || fail "--eot-id export"

# A train_gpt run directory (RUN_DIR/model.bin, here written by train_gpt as bf16) after 2 steps.
prepare_test_data
write_tiny_config
"$train_gpt" --device cpu --config "$tmp/tiny.json" --set training.max_steps=2 --set training.warmup_steps=1 --set training.eval_every=0 \
  --set output.export=bf16 --set output.dir="$tmp/run" >/dev/null || fail "train_gpt failed"
python3 scripts/export_hf.py "$tmp/run" "$tmp/hf_run" >/dev/null || fail "export_hf.py failed on a run directory"
python3 - "$tmp" <<'PY' || fail "run export: the file's tensors"
import sys
import numpy as np
tmp = sys.argv[1]
data = open(f"{tmp}/run/model.bin", "rb").read()
h = np.frombuffer(data, "<i4", 256)
assert h[0] == 20240326 and h[1] == 5, h[:8]
T, V, L, NH, C, Vp = (int(x) for x in h[2:8])
flat = (np.frombuffer(data, "<u2", offset=1024).astype(np.uint32) << 16).view(np.float32)
sizes = [("wte", (Vp, C)), ("wpe", (T, C)), ("ln1w", (L, C)), ("ln1b", (L, C)), ("qkvw", (L, 3 * C, C)),
         ("qkvb", (L, 3 * C)), ("attprojw", (L, C, C)), ("attprojb", (L, C)), ("ln2w", (L, C)), ("ln2b", (L, C)),
         ("fcw", (L, 4 * C, C)), ("fcb", (L, 4 * C)), ("fcprojw", (L, C, 4 * C)), ("fcprojb", (L, C)),
         ("lnfw", (C,)), ("lnfb", (C,))]
arrays, at = {}, 0
for name, s in sizes:
    n = int(np.prod(s))
    arrays[name] = flat[at:at + n].reshape(s)
    at += n
assert at == len(flat)
np.savez(f"{tmp}/run_expected.npz", **arrays)
open(f"{tmp}/run_shape", "w").write(f"{L} {NH} {C} {T} {V} {V - 1}")
PY
check_export "$tmp/hf_run" "$tmp/run_expected.npz" $(cat "$tmp/run_shape") || fail "run export"

# With transformers and torch: the Hugging Face model's logits against reference.py's float64 forward.
if python3 -c 'import torch, transformers' 2>/dev/null; then
  python3 - "$tmp" <<'PY' || fail "transformers' logits differ from reference.py's"
import sys
sys.path.insert(0, "scripts")
import numpy as np, torch
from transformers import GPT2LMHeadModel
import llmc_io, reference
tmp = sys.argv[1]
model = GPT2LMHeadModel.from_pretrained(f"{tmp}/hf_run").eval()
shape, params = llmc_io.read_model(f"{tmp}/run/model.bin")
tokens = np.random.default_rng(0).integers(0, shape["vocab_size"], (2, 24))
with torch.no_grad():
    ours = model(torch.tensor(tokens)).logits.double().numpy()
expected = reference.forward({k: v.astype(np.float64) for k, v in params.items()}, shape, tokens)[0]
expected = expected[:, :, :shape["vocab_size"]]
# float32 (torch) against float64 on logits of size ~1: 1e-4 absolute is ~1000 float32 ulps of slack.
assert np.abs(ours - expected).max() < 1e-4, np.abs(ours - expected).max()
print("transformers logits match reference.py")
PY
else
  echo "skipped: the transformers logits check (transformers and torch are not both installed)"
fi

# Bad input: one line on stderr and a non-zero exit.
expect_error() {  # expect_error PATTERN ARGS...
  local pattern=$1
  shift
  if python3 scripts/export_hf.py "$@" 2>"$tmp/err" >/dev/null; then fail "export_hf.py $* succeeded"; fi
  grep -q "$pattern" "$tmp/err" || fail "export_hf.py $*: message: $(cat "$tmp/err")"
  [ "$(wc -l <"$tmp/err")" = 1 ] || fail "export_hf.py $*: not one line: $(cat "$tmp/err")"
}
expect_error "does not exist" "$tmp/nonexistent.bin" "$tmp/x"
mkdir "$tmp/empty_run"
expect_error "without model.bin" "$tmp/empty_run" "$tmp/x"
head -c 5000 "$tmp/model_fp32.bin" >"$tmp/truncated.bin"
expect_error "truncated" "$tmp/truncated.bin" "$tmp/x"
head -c 100 "$tmp/model_fp32.bin" >"$tmp/short.bin"
expect_error "too short" "$tmp/short.bin" "$tmp/x"
expect_error "not an llm.c GPT-2 model file" "$tmp/data/train_000000.bin" "$tmp/x"
python3 - "$tmp/model_fp32.bin" "$tmp/v4.bin" <<'PY'
import sys
data = bytearray(open(sys.argv[1], "rb").read())
data[4:8] = (4).to_bytes(4, "little")
open(sys.argv[2], "wb").write(data)
PY
expect_error "version 4" "$tmp/v4.bin" "$tmp/x"
expect_error "not below the vocab size" "$tmp/model_fp32.bin" "$tmp/x" --eot-id 50
echo "test_export_hf: ok"
