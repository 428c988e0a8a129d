#!/usr/bin/env bash
# Everything the GPU path needs measured, in one call on a CUDA machine (about 5 minutes):
#   OUT=/some/dir bash bench/gpu_session.sh
# 1. what the compiler makes of each work split on this card (registers, spills);
# 2. bench/gpu_check.py: correctness at several sizes, then timings against cuDNN and the
#    tutorial loop (tables to stdout and $OUT/gpu_results.{md,json});
# 3. bench/gpu_integration.py: lstmkit.LSTM through every CUDA backend vs torch.nn.LSTM.
set -u
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}src"
OUT="${OUT:-/tmp/lstmkit-gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
status=0
cc=$("$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(p.major * 10 + p.minor, p.multi_processor_count)')
read -r arch sms <<<"$cc"
echo "== compile report (sm_$arch, $sms SMs)"
"$PY" bench/gpu_compile_report.py --arch "$arch" --sms "$sms" --hidden 64 128 256 512 \
    --batch 16 256 | tee "$OUT/compile_report.md" || status=1
echo "== gpu_check"
"$PY" bench/gpu_check.py || status=1
echo "== gpu_integration"
"$PY" bench/gpu_integration.py | tee "$OUT/gpu_integration.txt" || status=1
exit $status
