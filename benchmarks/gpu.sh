#!/usr/bin/env bash
# Every GPU figure of BENCHMARKS.md in one run (issue 13 item 5), sized for ~10 minutes on one H200:
#   bash benchmarks/gpu.sh                 # from the repository root, project installed (pip install -e .)
# 1. CLIP ViT-B/16 bf16 extraction: decode only, model only, write only and end to end (256 px videos,
#    EVL tensors, float16 store). Without network the pretrained weights fall back to random ones of the
#    same architecture (same FLOPs; the JSON says so).
# 2. The training input pipeline at ViT-B/16 shapes (197 x 768 tokens, K = 4, 8 frames): loader alone,
#    head step alone, both together, for linear / vivit_fe / evl on float16 and int8 stores.
# 3. The model-FLOP fraction: ViT-B/16 ~ 35 GFLOP per 224 px frame, ~790 TFLOP/s dense bf16 on an H200,
#    so ~22,600 frames/s is the model's ceiling.
set -euo pipefail
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
WORKERS=$(( $(nproc) - 2 ))
timeout 330 python -m benchmarks.extract --backbone openclip_vit_b16.openai --device cuda \
  --videos 96 --video-frames 64 --size 256 --batch-frames 512 --workers "$WORKERS" \
  --skip memory --workdir /tmp/gpu_extract --out "$OUT/extract_vitb16.json"
timeout 200 python -m benchmarks.train_input --device cuda --videos 256 --batch 256 --evl-batch 64 \
  --batches 20 --workers 6 --dir /tmp/gpu_input --out "$OUT/train_input.json"
python - "$OUT/extract_vitb16.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ceiling = 790e12 / 35e9
for key in ("model_only", "end_to_end"):
    fps = (r.get(key) or {}).get("frames_per_s")
    if fps:
        print(f"{key}: {fps:.0f} frames/s = {fps / ceiling:.1%} of the ~{ceiling:,.0f} frames/s bf16 ceiling")
PY
