#!/usr/bin/env bash
# Everything the GPU path needs measured, in one call on a CUDA machine (about 8 minutes):
#   OUT=/some/dir bash bench/gpu_session.sh
# 1. what the compiler makes of each work split on this card (registers, spills);
# 2. bench/gpu_check.py: correctness at several sizes, then timings against cuDNN and the
#    tutorial loop (tables to stdout and $OUT/gpu_results.{md,json});
# 3. bench/gpu_integration.py: lstmkit.LSTM through every CUDA backend vs torch.nn.LSTM;
# 4. bench/gpu_variants.py: the LSTM variants in the triton kernels (correctness, then timings
#    at batch 16, 1000 steps, hidden 256 beside cuDNN's plain LSTM and the reference loop),
#    after their compile report (registers and spills with the variants' flags on).
# Without a CUDA device it runs the same three steps as a smoke test on the CPU (tiny sizes,
# kernels in Triton's interpreter, compiled for an H100 without running them); CI does that.
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export OUT="${OUT:-/tmp/lstmkit-gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
status=0
if "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    read -r arch sms < <("$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(p.major * 10 + p.minor, p.multi_processor_count)')
    sizes=(--hidden 64 256 512 --batch 16)
    smoke=()
    vmode=(tf32 bf16)
else
    echo "no CUDA device: a smoke run on the CPU"
    arch=90 sms=132
    sizes=(--hidden 64 256 --batch 16 --mode fp32)
    smoke=(--cpu-smoke)
    vmode=(tf32)
fi
echo "== compile report (sm_$arch, $sms SMs)"
"$PY" bench/gpu_compile_report.py --arch "$arch" --sms "$sms" "${sizes[@]}" \
    | tee "$OUT/compile_report.md" || status=1
echo "== gpu_check"
"$PY" bench/gpu_check.py "${smoke[@]}" || status=1
echo "== gpu_integration"
"$PY" bench/gpu_integration.py | tee "$OUT/gpu_integration.txt" || status=1
echo "== compile report, variants on (sm_$arch)"
"$PY" bench/gpu_compile_report.py --arch "$arch" --sms "$sms" --hidden 64 256 --batch 16 \
    --mode "${vmode[@]}" --variants layer_norm peephole recurrent_dropout zoneout coupled cell_clip \
    | tee "$OUT/compile_report_variants.md" || status=1
echo "== gpu_variants"
"$PY" bench/gpu_variants.py "${smoke[@]}" || status=1
echo "== done: exit $status, files in $OUT"
exit $status
