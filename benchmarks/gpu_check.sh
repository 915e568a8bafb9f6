#!/usr/bin/env bash
# The GPU check (issue 18): run as is on a machine with one CUDA GPU, from the checkout's root.
#
#   benchmarks/gpu_check.sh                          # the full check on cuda (about an hour: the
#                                                    # test suite trains its toy models once)
#   benchmarks/gpu_check.sh --device cpu --quick     # the dry run: a few test files, 10 facts
#   benchmarks/gpu_check.sh --skip-tests             # only the measurements
#   benchmarks/gpu_check.sh --set target_rows=512    # passed to gpu_check.py (repeatable)
#
# Steps, each logged under --out (default runs/gpu_check):
#   1. environment.txt: nvidia-smi, torch and CUDA versions;
#   2. tests.log: the test suite (--quick: a few fast files). Conformance checks of objectives,
#      distributions and methods take a device list and add "cuda" when one is there
#      (massedit.testing.conformance.default_devices);
#   3. gpu_check.json: benchmarks/gpu_check.py: MEMIT on SmolLM2 in bf16 over 1,000 facts in one
#      batch on the device (seconds per fact, peak memory, target and statistics throughput,
#      ES/PS/NS/Score before and after on 100 of them, revert bit-exact, tiny-model agreement
#      with the CPU);
#   4. summary.txt: the figures to paste into docs/hardware.md.
# Environment: PYTHON (default .venv/bin/python if present, else python).
set -uo pipefail

DEVICE=cuda
QUICK=0
TESTS=1
OUT=runs/gpu_check
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --skip-tests) TESTS=0; shift ;;
    --set) EXTRA+=(--set "$2"); shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python; fi
fi
mkdir -p "$OUT"
status=0

echo "== 1. environment"
: > "$OUT/environment.txt"
{
  date -u
  if [[ "$DEVICE" == cuda* ]]; then nvidia-smi || echo "nvidia-smi not found"; fi
  "$PY" -c "import torch, transformers, massedit; print('torch', torch.__version__, 'cuda',
torch.version.cuda, 'available', torch.cuda.is_available(), 'devices', torch.cuda.device_count());
print('transformers', transformers.__version__, 'massedit', massedit.__version__)"
} >> "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"
if [[ "$DEVICE" == cuda* ]] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "no CUDA device visible to torch: run with --device cpu --quick for the dry run" >&2
  exit 1
fi

if [[ $TESTS == 1 ]]; then
  echo "== 2. tests"
  if [[ $QUICK == 1 ]]; then
    # Fast files of issue 18: half precision, offloaded inputs, --allow-pickle (under a minute
    # each on one core).
    SELECTION=(tests/test_half_precision.py tests/test_offload_inputs.py tests/test_allow_pickle.py)
  else
    SELECTION=(tests)
  fi
  "$PY" -m pytest -q -p no:cacheprovider "${SELECTION[@]}" 2>&1 | tee "$OUT/tests.log" | tail -n 15
  test_status=${PIPESTATUS[0]}
  [[ $test_status != 0 ]] && status=1
  echo "tests exit status: $test_status" | tee -a "$OUT/tests.log"
fi

echo "== 3. MEMIT on SmolLM2 (bf16) on $DEVICE"
ARGS=(--device "$DEVICE" --dtype bfloat16 --out "$OUT/gpu_check.json" --no-progress)
[[ $QUICK == 1 ]] && ARGS+=(--quick)
ARGS+=("${EXTRA[@]}")
[[ "$DEVICE" == cpu ]] && ARGS+=(--threads "${THREADS:-1}")
if ! "$PY" benchmarks/gpu_check.py "${ARGS[@]}" > "$OUT/gpu_check.log" 2>&1; then
  status=1
  echo "gpu_check.py failed; the end of $OUT/gpu_check.log:" >&2
  tail -n 30 "$OUT/gpu_check.log" >&2
  exit $status
fi

echo "== 4. summary"
"$PY" - "$OUT/gpu_check.json" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
r = json.load(open(sys.argv[1]))
e, s, q, a = r["edit"], r["statistics"], r["quality"], r["device_agreement"]
env = r["environment"]
print(f"device {env['device']} {env.get('gpu', '')} torch {env['torch']}")
print(f"statistics: {s['tokens']} tokens x {s['sites']} sites in {s['seconds']} s = "
      f"{s['tokens_per_second']} tokens/s (peak {s['peak_memory_gb']} GB)")
print(f"edit: MEMIT {e['facts']} facts in one batch, {e['dtype']}, layers {e['layers']}: "
      f"{e['seconds']} s = {e['seconds_per_fact']} s/fact; targets {e['targets_seconds']} s "
      f"({e['targets_per_second']} targets/s), keys and solves {e['keys_and_solves_seconds']} s; "
      f"peak memory {e['peak_memory_gb']} GB, {e['peak_memory_kind']}")
names = {"efficacy_success": "ES", "paraphrase_success": "PS", "neighborhood_success": "NS",
         "score": "Score"}
fmt = lambda d: " ".join(f"{names[k]} {v:.1f}" for k, v in d.items() if v is not None)
print(f"quality on {q['measured']} edited facts: before {fmt(q['before'])} | after {fmt(q['after'])}")
print(f"revert bit-exact: {r['revert_bit_exact']}; tiny llama on {env['device']} vs cpu: max "
      f"|dW| {a['max_abs_weight_difference']:.3g} (weights up to {a['max_abs_weight']:.3g})")
EOF
exit $status
