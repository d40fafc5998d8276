#!/usr/bin/env bash
# Every GPU figure of the project in one call (< 8 minutes on an H100/H200), each part under its
# own `timeout` so that one part cannot eat the others' time, and a failing part does not stop the
# rest. Writes one JSON per part and gpu_check.json (per part: exit code, seconds, log, JSON path)
# into $OUT (default benchmarks/results/gpu_check), and ends with one summary line.
#
#   bash benchmarks/gpu_check.sh                 # from the repository root, on the GPU machine
#   OUT=/some/dir PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
#
# Parts (budget in seconds):
#   lowbit   240  benchmarks/lowbit_inference.py --device cuda: LDM-4 + SD-size UNets at batch
#                 1/8/32, bf16 eager / compile (batch 32) / W8A8 Triton / W4A8 Triton, per layer
#   overhead  90  benchmarks/quant_overhead.py --device cuda --unet ldm4 --autocast bf16 --batch 32
#                 --modes eager,cudagraph,compile --profile (the training-step cost)
#   ptq       60  benchmarks/ptq_cost.py --device cuda: PTQ cost per block (LDM-4, 1 rank, configured batch)
#   generate  60  `python -m saq_lightning generate` of the digits config on CUDA (teacher trajectories/s)
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
OUT=${OUT:-benchmarks/results/gpu_check}
mkdir -p "$OUT"
SUMMARY="$OUT/gpu_check.json"
echo "{}" > "$SUMMARY"
START=$(date +%s)

record() {  # name rc seconds log json
  "$PYTHON" - "$SUMMARY" "$@" <<'EOF'
import json, sys
path, name, rc, secs, log, out = sys.argv[1:7]
d = json.load(open(path))
d[name] = {"rc": int(rc), "ok": rc == "0", "seconds": float(secs), "log": log, "json": out,
           "timed_out": rc in ("124", "137")}
json.dump(d, open(path, "w"), indent=1)
EOF
}

part() {  # name budget_s json command...
  local name=$1 budget=$2 json=$3
  shift 3
  local log="$OUT/$name.log" t0 rc
  t0=$(date +%s.%N)
  echo "== $name (budget ${budget} s): $*"
  timeout -k 10 "$budget" "$@" >"$log" 2>&1
  rc=$?
  local secs
  secs=$(awk "BEGIN{print $(date +%s.%N) - $t0}")
  tail -n 3 "$log"
  echo "== $name: rc $rc in ${secs} s"
  record "$name" "$rc" "$secs" "$log" "$json"
}

"$PYTHON" - "$OUT/environment.json" <<'EOF'
import json, subprocess, sys, torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "nvidia_smi": subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                      "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()}
try:
    import triton
    info["triton"] = triton.__version__
except ImportError:
    info["triton"] = None
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(info)
EOF

part lowbit 240 "$OUT/lowbit_inference_cuda.json" \
  "$PYTHON" benchmarks/lowbit_inference.py --device cuda --ldm-batches 1,8,32 --compile-batches 32 --repeats 10 \
  --out "$OUT/lowbit_inference_cuda.json"
part overhead 90 "$OUT/quant_overhead_cuda.json" \
  "$PYTHON" benchmarks/quant_overhead.py --device cuda --unet ldm4 --autocast bf16 --batch 32 \
  --modes eager,cudagraph,compile --profile --out "$OUT/quant_overhead_cuda.json"
part ptq 60 "benchmarks/results/ptq_cost_cuda.json" \
  "$PYTHON" benchmarks/ptq_cost.py --device cuda --models ldm4 --ranks 1 --samples 64 --batch_size 32 --iters 20 \
  --act_iters 5
part generate 60 "$OUT/generate_cuda.json" \
  "$PYTHON" -c '
import json, subprocess, sys, time
out = sys.argv[1]
cmd = [sys.executable, "-m", "saq_lightning", "generate", "--config", "configs/digits_w4a4.yaml",
       "--accelerator", "cuda", "--progress", "false", "--data.init_args.shards", out + "/trajectories"]
t0 = time.perf_counter()
rc = subprocess.run(cmd).returncode
secs = time.perf_counter() - t0
manifest = json.load(open(out + "/trajectories/manifest.json")) if rc == 0 else {}
json.dump({"cmd": cmd, "rc": rc, "seconds": secs, "manifest_keys": sorted(manifest)}, open(out + "/generate_cuda.json", "w"), indent=1)
print(f"generate: rc {rc}, {secs:.1f} s (process start, teacher load and CUDA init included)")
sys.exit(rc)
' "$OUT"

"$PYTHON" - "$SUMMARY" "$START" <<'EOF'
import json, sys, time
d = json.load(open(sys.argv[1]))
total = time.time() - int(sys.argv[2])
d["_total_seconds"] = total
json.dump(d, open(sys.argv[1], "w"), indent=1)
parts = " ".join(f"{k}={'ok' if v['ok'] else ('timeout' if v['timed_out'] else 'rc' + str(v['rc']))}({v['seconds']:.0f}s)"
                 for k, v in d.items() if not k.startswith("_"))
print(f"gpu_check: {parts} total={total:.0f}s json={sys.argv[1]}")
EOF
