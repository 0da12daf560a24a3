# scripts/step_profile.py on a hand-written Nsight Systems kernel summary (cuda_gpu_kern_sum CSV) and a
# hand-written dry run: every kernel lands in its op group, each group's measured ms is its kernels' total /
# micro-steps (the optimizer's / optimizer steps), ratios, unmatched names, a baseline profile subtracted,
# the older nsys column names, and clear errors. Then the same CSV against a real dry run of
# configs/tiny_cpu.json when this build has the CUDA backend.
source "$(dirname "$0")/e2e_common.sh"
profile="$root/scripts/step_profile.py"

# The step model table as train_gpt --device cuda --dry-run prints it (src/trainer.c's print_step_model),
# with round modelled times and 4 accumulation steps per optimizer step.
cat > "$tmp/dryrun.txt" <<'TXT'
model: GPT-2, 12 layers, 12 heads, n_embd 768, block_size 1024, vocab 50257 (padded 50304)
memory plan (cuda backend, micro-batch 64 x 1024, 4 accumulation steps):
  total                                     25127.3 MiB
step model (the cuda backend's design at its roofline: bf16 989.4, tf32 494.7, fp32 66.9 TFLOP/s, 3.35 TB/s):
    per micro-step                              GFLOP     GB moved         ms
    matmuls                                   48589.0        88.10      50.00
    attention                                  6572.5        24.39       8.00
    element-wise                                135.2        77.44      20.00
    loss                                         23.1        19.78       5.00
    optimizer (per optimizer step)                1.7         4.98       2.00
  modelled micro-step 83.50 ms (optimizer / 4 accumulation steps included): 785000 tokens/s, MFU ceiling 60.0% (6P + 6LCT = 803.5 MFLOP/token, of the bf16 peak)
  traffic per token: 3.21 MB (the pre-issue-16 design: 13.21 MB, 4.1x)
TXT

# A profile of 2 optimizer steps = 8 micro-steps, in nsys 2023+'s columns. Hand-computed per micro-step:
#   matmuls      (280 + 80 + 16 + 4) ms / 8 = 47.5   (sm90 GEMM 35, nvjet 10, CUTLASS 2, split-K 0.5)
#   attention    (24 + 32 + 16 + 8) / 8     = 10.0   (key grad 4, forward 3, query grad 2, row dots 1)
#   element-wise (40 + 8 + 56 + 64) / 8     = 21.0   (GELU bwd 8, LN bwd 7, LN fwd bf16 5, LN fwd fp32 1)
#   loss         (12 + 36) / 8              =  6.0
#   optimizer    (5 + 1) / 2 optimizer steps = 3.0
#   unmatched    0.8 / 8                     =  0.1
#   micro-step   47.5 + 10 + 21 + 6 + 3/4    = 85.25
cat > "$tmp/kern.csv" <<'CSV'
"Time (%)","Total Time (ns)","Instances","Avg (ns)","Med (ns)","Min (ns)","Max (ns)","StdDev (ns)","Name"
40.2,280000000,384,729166.7,729000.0,700000,760000,1200.5,"sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1_execute_segment_k_off_kernel__5x_cublas"
11.5,80000000,96,833333.3,833000.0,800000,860000,900.1,"nvjet_tst_192x192_64x4_2x1_v_bz_coopA_TNT"
2.3,16000000,16,1000000.0,1000000.0,990000,1010000,10.0,"void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8>(T1::Params)"
0.6,4000000,16,250000.0,250000.0,240000,260000,5.0,"void cublasLt::splitKreduce_kernel<(int)32, (int)16, int, float, __nv_bfloat16, float, __nv_bfloat16, (bool)1, (bool)0, (bool)0>(cublasLt::cublasSplitKParams<T4>, const T3 *, const T5 *, T5 *, const T4 *, const T4 *, const T6 *, const T3 *, T6 *, void *, long, T4 *, int *, T4 *, T4 *, const T4 *, const T4 *, const T4 *, const T4 *, const T4 *)"
3.4,24000000,96,250000.0,250000.0,240000,260000,5.0,"void flash_forward_kernel<__nv_bfloat16>(T1 *, float *, const T1 *, int, int, int, OperandCast)"
4.6,32000000,96,333333.3,333000.0,330000,340000,5.0,"void flash_key_grad_kernel<__nv_bfloat16>(FlashGradients, const float *, const T1 *, const float *, const float *, int, int, int, OperandCast)"
2.3,16000000,96,166666.7,166000.0,160000,170000,5.0,"void flash_query_grad_kernel<__nv_bfloat16>(FlashGradients, const float *, const T1 *, const float *, const float *, int, int, int, OperandCast)"
1.1,8000000,96,83333.3,83000.0,80000,90000,5.0,"void flash_row_dots_kernel<__nv_bfloat16>(float *, const float *, const T1 *, int, int, int, int, OperandCast)"
5.7,40000000,200,200000.0,200000.0,190000,210000,5.0,"void layernorm_forward_kernel<__nv_bfloat16, __nv_bfloat16>(T1 *, float *, float *, T1 *, const T1 *, const T1 *, const T2 *, const T2 *, int, int)"
1.1,8000000,8,1000000.0,1000000.0,990000,1010000,5.0,"void layernorm_forward_kernel<float, __nv_bfloat16>(T1 *, float *, float *, T1 *, const T1 *, const T1 *, const T2 *, const T2 *, int, int)"
8.0,56000000,200,280000.0,280000.0,270000,290000,5.0,"void layernorm_backward_input_kernel<__nv_bfloat16, __nv_bfloat16>(float *, const float *, const T1 *, const T2 *, const float *, const float *, int, int)"
9.2,64000000,96,666666.7,666000.0,660000,670000,5.0,"void gelu_backward_fused_kernel<__nv_bfloat16>(T1 *, __nv_bfloat16 *, float *, const float *, const T1 *, int, int)"
1.7,12000000,8,1500000.0,1500000.0,1490000,1510000,5.0,"void classifier_forward_kernel<__nv_bfloat16>(SoftmaxStats *, float *, const T1 *, const int *, int, int)"
5.2,36000000,8,4500000.0,4500000.0,4490000,4510000,5.0,"void classifier_backward_kernel<__nv_bfloat16, __nv_bfloat16>(T1 *, const T2 *, const SoftmaxStats *, const int *, float, int, int)"
0.7,5000000,2,2500000.0,2500000.0,2490000,2510000,5.0,"optimizer_kernel(OptimizerBuffers, const Chunk *, int, UpdateConstants, UpdateSums *)"
0.1,1000000,2,500000.0,500000.0,490000,510000,5.0,"grad_square_sums_kernel(OptimizerBuffers, const Chunk *, int, double *)"
0.1,800000,8,100000.0,100000.0,90000,110000,5.0,"void mystery_reduce_kernel<float>(float *, int)"
CSV

python3 "$profile" --dry-run "$tmp/dryrun.txt" --kernels "$tmp/kern.csv" --optimizer-steps 2 --micro-steps 8 \
  --json "$tmp/result.json" > "$tmp/report.txt" || fail "step_profile.py failed: $(cat "$tmp/report.txt")"

python3 - "$tmp/result.json" "$tmp/report.txt" <<'PY' || fail "the comparison of the canned profile"
import json, sys
result = json.load(open(sys.argv[1]))
report = open(sys.argv[2]).read()
expected = {  # group: (modelled, measured, top kernel's function name, kernels)
    "matmuls": (50.0, 47.5, "sm90_xmma_gemm", 4),
    "attention": (8.0, 10.0, "void flash_key_grad_kernel", 4),
    "element-wise": (20.0, 21.0, "void gelu_backward_fused_kernel", 4),
    "loss": (5.0, 6.0, "void classifier_backward_kernel", 2),
    "optimizer": (2.0, 3.0, "optimizer_kernel", 2),
}
for group, (modelled, measured, top, count) in expected.items():
    row = result["groups"][group]
    assert abs(row["modelled_ms"] - modelled) < 1e-12, (group, row["modelled_ms"])
    assert abs(row["measured_ms"] - measured) < 1e-9, (group, row["measured_ms"])
    assert abs(row["ratio"] - measured / modelled) < 1e-12, (group, row["ratio"])
    assert len(row["kernels"]) == count, (group, [k["name"] for k in row["kernels"]])
    assert row["kernels"][0]["name"].startswith(top), (group, row["kernels"][0]["name"])
# Launches per micro-step (the optimizer's per optimizer step).
gemm = result["groups"]["matmuls"]["kernels"][0]
assert abs(gemm["ms"] - 35.0) < 1e-9 and gemm["launches"] == 48, gemm
assert result["groups"]["optimizer"]["kernels"][0]["launches"] == 1
assert result["micro_steps"] == 8 and result["optimizer_steps"] == 2 and result["accumulation_steps"] == 4
micro = result["micro_step"]
assert abs(micro["measured_ms"] - 85.25) < 1e-9 and micro["modelled_ms"] == 83.5, micro
assert abs(micro["ratio"] - 85.25 / 83.5) < 1e-12, micro
assert [k["name"] for k in result["unmatched"]] == ["void mystery_reduce_kernel<float>(float *, int)"]
assert abs(result["unmatched_ms"] - 0.1) < 1e-12
# The printed table: the same numbers, rounded; the top 3 of a group only; the unmatched name in full.
lines = report.splitlines()
def row_of(label):
    found = [l.split() for l in lines if l.strip().startswith(label + " ") and "ms" not in l.split()]
    assert len(found) >= 1, (label, report)
    return found[0]
assert row_of("matmuls")[-3:] == ["50.00", "47.50", "0.95"], row_of("matmuls")
assert row_of("attention")[-3:] == ["8.00", "10.00", "1.25"], row_of("attention")
assert row_of("element-wise")[-3:] == ["20.00", "21.00", "1.05"], row_of("element-wise")
assert row_of("loss")[-3:] == ["5.00", "6.00", "1.20"], row_of("loss")
assert row_of("optimizer (per optimizer step)")[-3:] == ["2.00", "3.00", "1.50"]
assert row_of("micro-step (optimizer / 4)")[-3:] == ["83.50", "85.25", "1.02"], row_of("micro-step")
assert "unmatched kernels (in no group)" in report and "void mystery_reduce_kernel<float>(float *, int)" in report
top = report[report.index("top kernels"):]
assert "sm90_xmma_gemm_bf16bf16" in top and "nvjet_tst_192x192" in top and "cutlass::Kernel2" in top
assert "splitKreduce_kernel" not in top, "the 4th kernel of matmuls was printed"
assert "void layernorm_forward_kernel<__nv_bfloat16, __nv_bfloat16>" in top and "(T1 *" not in top
print("canned profile ok")
PY

# A baseline profile (1 optimizer step, 4 micro-steps) subtracted: both runs hold a once-only start-up cast
# (3 ms, 1 launch) and the short one half of every other kernel's time and launches, so the difference over
# 8 - 4 micro-steps is the steady state above, and the cast cancels.
python3 - "$tmp" <<'PY' || fail "could not write the baseline profiles"
import csv, sys
tmp = sys.argv[1]
rows = list(csv.reader(open(f"{tmp}/kern.csv")))
header, body = rows[0], rows[1:]
cast = ["0.4", "3000000", "1", "3000000", "3000000", "3000000", "3000000", "0",
        "void convert_kernel<float, __nv_bfloat16>(T2 *, const T1 *, unsigned long)"]
def write(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)
write(f"{tmp}/long.csv", [header] + body + [cast])
half = [[r[0], str(int(r[1]) // 2), str(int(r[2]) // 2)] + r[3:] for r in body]
write(f"{tmp}/short.csv", [header] + half + [cast])
PY
python3 "$profile" --dry-run "$tmp/dryrun.txt" --kernels "$tmp/long.csv" --optimizer-steps 2 \
  --baseline-kernels "$tmp/short.csv" --baseline-optimizer-steps 1 --json "$tmp/diff.json" > "$tmp/diff.txt" \
  || fail "step_profile.py with a baseline failed: $(cat "$tmp/diff.txt")"
python3 - "$tmp/result.json" "$tmp/diff.json" <<'PY' || fail "the baseline's difference"
import json, sys
plain, diff = (json.load(open(p)) for p in sys.argv[1:3])
assert diff["micro_steps"] == 4 and diff["optimizer_steps"] == 1, (diff["micro_steps"], diff["optimizer_steps"])
for group, row in plain["groups"].items():
    assert abs(diff["groups"][group]["measured_ms"] - row["measured_ms"]) < 1e-9, (group, diff["groups"][group])
# The cast, launched once in each run, is left out and named.
assert not [k for k in diff["groups"]["element-wise"]["kernels"] if "convert_kernel" in k["name"]]
assert diff["once_only"] == ["void convert_kernel<float, __nv_bfloat16>(T2 *, const T1 *, unsigned long)"]
assert plain["once_only"] == []
assert abs(diff["micro_step"]["measured_ms"] - 85.25) < 1e-9
print("baseline ok")
PY
grep -q "long.csv minus .*short.csv" "$tmp/diff.txt" || fail "the report does not name the subtracted profile"
grep -q "left out, launched as often in the baseline (once per process): void convert_kernel<float, __nv_bfloat16>$" \
  "$tmp/diff.txt" || fail "the report does not name the once-only kernel: $(cat "$tmp/diff.txt")"

# nsys 2020-2022's columns ("Time(%)", "Total Time" without a unit, "Average"...), behind nsys's progress
# lines (its stdout saved whole), and without "Instances": the same groups.
python3 - "$tmp" <<'PY' || fail "could not write the old-format CSV"
import csv, sys
tmp = sys.argv[1]
rows = list(csv.reader(open(f"{tmp}/kern.csv")))
with open(f"{tmp}/old.csv", "w", newline="") as f:
    f.write("Generating SQLite file report.sqlite from report.nsys-rep\nExporting data to SQLite...\n\n")
    w = csv.writer(f)
    w.writerow(["Time(%)", "Total Time", "Average", "Minimum", "Maximum", "Name"])
    for r in rows[1:]:
        w.writerow([r[0], r[1], r[3], r[5], r[6], r[8]])
PY
python3 "$profile" --dry-run "$tmp/dryrun.txt" --kernels "$tmp/old.csv" --optimizer-steps 2 --json "$tmp/old.json" \
  > "$tmp/old.txt" || fail "step_profile.py on the old columns failed: $(cat "$tmp/old.txt")"
python3 - "$tmp/result.json" "$tmp/old.json" <<'PY' || fail "the old columns"
import json, sys
plain, old = (json.load(open(p)) for p in sys.argv[1:3])
for group, row in plain["groups"].items():
    assert abs(old["groups"][group]["measured_ms"] - row["measured_ms"]) < 1e-9, group
    assert all(k["launches"] is None for k in old["groups"][group]["kernels"]), group
print("old columns ok")
PY

# Errors: one line on stderr naming the file (and line), non-zero exit.
expect_error() {  # expect_error PATTERN ARGS...: step_profile.py fails and says PATTERN
  local pattern=$1
  shift
  if python3 "$profile" "$@" >/dev/null 2>"$tmp/err.txt"; then fail "step_profile.py accepted: $*"; fi
  grep -q -- "$pattern" "$tmp/err.txt" || fail "expected '$pattern', got: $(cat "$tmp/err.txt")"
  [ "$(wc -l < "$tmp/err.txt")" -eq 1 ] || fail "more than one line of error: $(cat "$tmp/err.txt")"
}
sed '6s/,"void flash_forward/,"extra","void flash_forward/' "$tmp/kern.csv" > "$tmp/cells.csv"
grep -q '"extra"' "$tmp/cells.csv" || fail "could not write cells.csv"
expect_error "cells.csv:6: 10 cells, but the header (line 1) has 9" \
  --dry-run "$tmp/dryrun.txt" --kernels "$tmp/cells.csv" --optimizer-steps 2
sed '7s/^\([^,]*\),32000000,/\1,32ms,/' "$tmp/kern.csv" > "$tmp/number.csv"
expect_error "number.csv:7: the 'Total Time (ns)' cell is not a number: '32ms'" \
  --dry-run "$tmp/dryrun.txt" --kernels "$tmp/number.csv" --optimizer-steps 2
sed '1s/"Total Time (ns)"/"Duration"/' "$tmp/kern.csv" > "$tmp/nototal.csv"
expect_error "nototal.csv:1: no total time column" --dry-run "$tmp/dryrun.txt" --kernels "$tmp/nototal.csv" --optimizer-steps 2
printf 'Time,Total\n1,2\n' > "$tmp/noname.csv"
expect_error "noname.csv: no header row with a \"Name\" column" \
  --dry-run "$tmp/dryrun.txt" --kernels "$tmp/noname.csv" --optimizer-steps 2
printf '"Time (%%)","Total Time (ns)","Instances","Name"\n50.0,100,1,"unterminated\n' > "$tmp/quote.csv"
expect_error "quote.csv:[0-9]*: not CSV" --dry-run "$tmp/dryrun.txt" --kernels "$tmp/quote.csv" --optimizer-steps 2
expect_error "cannot read the kernel summary $tmp/missing.csv" \
  --dry-run "$tmp/dryrun.txt" --kernels "$tmp/missing.csv" --optimizer-steps 2
head -n 3 "$tmp/dryrun.txt" > "$tmp/nomodel.txt"
expect_error "nomodel.txt: no \"step model\" table" --dry-run "$tmp/nomodel.txt" --kernels "$tmp/kern.csv" --optimizer-steps 2
grep -v '^    loss' "$tmp/dryrun.txt" > "$tmp/noloss.txt"
expect_error "noloss.txt:4: the step model table lacks the rows loss" \
  --dry-run "$tmp/noloss.txt" --kernels "$tmp/kern.csv" --optimizer-steps 2
expect_error "7 micro-steps, but 2 optimizer steps of the dry run's 4 accumulation steps are 8" \
  --dry-run "$tmp/dryrun.txt" --kernels "$tmp/kern.csv" --optimizer-steps 2 --micro-steps 7
expect_error "must be shorter" --dry-run "$tmp/dryrun.txt" --kernels "$tmp/long.csv" --optimizer-steps 2 \
  --baseline-kernels "$tmp/short.csv" --baseline-optimizer-steps 2
echo "errors ok"

# A real dry run: configs/tiny_cpu.json's step model (1 accumulation step), when this build has the CUDA
# backend (the dry run needs no GPU).
if "$train_gpt" --config "$root/configs/tiny_cpu.json" --device cuda --dry-run > "$tmp/tiny_dryrun.txt" 2>"$tmp/tiny_err.txt"; then
  python3 "$profile" --dry-run "$tmp/tiny_dryrun.txt" --kernels "$tmp/kern.csv" --optimizer-steps 8 \
    --json "$tmp/tiny.json" > "$tmp/tiny.txt" || fail "step_profile.py on a real dry run failed: $(cat "$tmp/tiny.txt")"
  python3 - "$tmp/tiny_dryrun.txt" "$tmp/tiny.json" <<'PY' || fail "the real dry run"
import json, re, sys
text, result = open(sys.argv[1]).read(), json.load(open(sys.argv[2]))
# The modelled ms as printed, read here by their labels.
labels = {"matmuls": "matmuls", "attention": "attention", "element-wise": "element-wise", "loss": "loss",
          "optimizer": "optimizer (per optimizer step)"}
for group, label in labels.items():
    printed = float(re.search(r"^    " + re.escape(label) + r"\s+\S+\s+\S+\s+(\S+)$", text, re.M).group(1))
    assert result["groups"][group]["modelled_ms"] == printed, (group, printed)
assert result["accumulation_steps"] == 1 and result["micro_steps"] == 8 and result["optimizer_steps"] == 8
# 8 micro-steps = 8 optimizer steps: the canned totals / 8, the optimizer's too.
for group, measured in [("matmuls", 47.5), ("attention", 10.0), ("element-wise", 21.0), ("loss", 6.0),
                        ("optimizer", 0.75)]:
    assert abs(result["groups"][group]["measured_ms"] - measured) < 1e-9, group
print("real dry run ok")
PY
elif grep -q "no CUDA backend" "$tmp/tiny_err.txt"; then
  echo "skipped the real dry run: this build has no CUDA backend (no nvcc), so --device cuda --dry-run cannot run"
else
  fail "train_gpt --device cuda --dry-run failed: $(cat "$tmp/tiny_err.txt")"
fi
echo "ok"
