#!/usr/bin/env bash
# Bad inputs against the CLI: each case's exit code, stderr line count, whether a traceback shows, last stderr line.
# usage: bash tools/bad_input_probe.sh [REPO] [WORKDIR]   (defaults: this repository, a new /tmp/saq_probe.*)
# Every case must end in exit 2 with one error line (export_ok: exit 0), and "payload not executed".
REPO=$(cd "${1:-$(dirname "$0")/..}" && pwd); W=${2:-$(mktemp -d /tmp/saq_probe.XXXXXX)}; PY=${PYTHON:-$REPO/.venv/bin/python}
mkdir -p "$W"; [ -z "$(ls -A "$W")" ] || { echo "$W is not empty: give an empty work folder" >&2; exit 2; }
cd "$REPO"
export OMP_NUM_THREADS=1 PYTHONPATH=$REPO
S="--num_samples 4 --steps 2 --device cpu --grid_size 0 --batch_size 4"
case_() { local name=$1; shift; local err="$W/$name.err"
  timeout 600 $PY -m saq_lightning "$@" >"$W/$name.out" 2>"$err"; local rc=$?
  local tb=$(grep -c "^Traceback" "$err"); local n=$(grep -vc "^\s*$" "$err")
  printf "%-28s rc=%-3s lines=%-3s traceback=%s | %s\n" "$name" "$rc" "$n" "$tb" "$( (grep -m1 '^error:' "$err" || grep -v '^\s*$' "$err" | tail -1) | cut -c1-200)"; }
head -c 4096 /dev/urandom > "$W/random.ckpt"; cp "$W/random.ckpt" "$W/random.npz"
$PY - "$W" <<'PY'
import sys, pickle, os, numpy as np
w = sys.argv[1]
class P:
    def __reduce__(self): return (os.system, (f"touch {w}/PWNED",))
pickle.dump({"state_dict": P()}, open(f"{w}/payload.ckpt", "wb"))
a = np.zeros((8, 8, 8, 1), np.float32); a[0, 0, 0, 0] = np.nan
np.savez(f"{w}/nan.npz", arr_0=a)
np.savez(f"{w}/wrongdtype.npz", arr_0=np.zeros((8, 8, 8, 1), np.float32) + 3.0)
PY
case_ student_missing sample --out $W/s1 $S --student $W/nope.ckpt
case_ naive_no_policy sample --out $W/s2 $S --student naive:
case_ naive_bad_policy sample --out $W/s3 $S --student naive:w9a9
case_ solver_unknown sample --out $W/s4 $S --solver nosuch
case_ steps_zero sample --out $W/s5 --num_samples 4 --steps 0 --device cpu --grid_size 0
case_ spacing_unknown sample --out $W/s6 $S --spacing wrong
case_ runtime_unknown sample --out $W/s7 $S --student naive:w4a4 --runtime foo
case_ student_random_bytes sample --out $W/s8 $S --student $W/random.ckpt
case_ student_pickle_payload sample --out $W/s9 $S --student $W/payload.ckpt
[ -e $W/PWNED ] && echo "!!! payload executed" || echo "payload not executed"
case_ num_samples_negative sample --out $W/s10 --num_samples -1 --steps 2 --device cpu --grid_size 0
case_ guidance_nan sample --out $W/s11 $S --guidance_scale nan
case_ out_is_a_file sample --out $W/random.ckpt $S
case_ export_ok export --student naive:w4a4 --out $W/e1 --device cpu
case_ export_again export --student naive:w4a4 --out $W/e1 --device cpu
if [ -f $W/e1/weights.safetensors ]; then cp -r $W/e1 $W/e2; $PY - $W/e2/weights.safetensors <<'PY'
import sys; p=sys.argv[1]; b=bytearray(open(p,'rb').read()); b[-100]^=1; open(p,'wb').write(b)
PY
case_ export_bitflip_fake sample --out $W/s12 $S --student $W/e2
case_ export_bitflip_int sample --out $W/s13 $S --student $W/e2 --runtime int
cp -r $W/e1 $W/e3; $PY - $W/e3/manifest.json <<'PY'
import sys, json; p=sys.argv[1]; m=json.load(open(p)); s=json.dumps(m); s=s.replace('"act_bits": 4','"act_bits": 8',1); open(p,'w').write(s)
PY
case_ export_manifest_edited sample --out $W/s14 $S --student $W/e3
fi
case_ evaluate_missing evaluate --samples $W/nope.npz --device cpu
case_ evaluate_random_bytes evaluate --samples $W/random.npz --device cpu
case_ evaluate_nan evaluate --samples $W/nan.npz --device cpu
case_ evaluate_float_range evaluate --samples $W/wrongdtype.npz --device cpu
case_ fit_config_missing fit --config $W/nope.yaml
case_ fit_unknown_key fit --config configs/digits_w4a4.yaml --model.init_args.nosuch 1
case_ fit_shards_missing fit --config configs/digits_w4a4.yaml --data.init_args.shards $W/noshards --trainer.default_root_dir $W/f1
case_ fit_ckpt_random fit --config configs/digits_w4a4.yaml --ckpt_path $W/random.ckpt --trainer.default_root_dir $W/f2
case_ ptq_shards_missing ptq --config configs/digits_w4a8_saptq.yaml --data.init_args.shards $W/noshards
case_ generate_shards_is_file generate --config configs/digits_w4a4.yaml --data.init_args.shards $W/random.ckpt
