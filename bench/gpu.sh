#!/usr/bin/env bash
# The prepared GPU check (issue 9), for one call on a lent GPU machine, from the repository root:
#
#     bash bench/gpu.sh            # results in $OUT (or /tmp/avstore-gpu): gpu.md, gpu.json, the run logs
#
# 1. installs what the machine's image lacks from wheels carried in .whl/ (bench/fetch_wheels.sh makes them);
# 2. makes a store on the spot from the sample corpus, with MTCNN on the GPU (extract --device cuda);
# 3. trains one epoch each of resnet18, vgg16, simple3d, i3d and xattn with bf16 AMP, under torchrun on
#    every GPU when there are several;
# 4. reports samples/s, the fraction of step time spent waiting for data, and the device, per encoder.
# Small on purpose (48 clips at 224 px, T=16): a few minutes in all, to fit a 15-minute device budget.
set -euo pipefail
OUT=${OUT:-/tmp/avstore-gpu}
PY=${PY:-python3}
WORK=$(mktemp -d)
mkdir -p "$OUT"
if [ -d .whl ]; then  # .whl and its sub-folders (the wheels may come in parts, see bench/README.md)
    LINKS=(); for d in .whl .whl/*/; do [ -d "$d" ] && LINKS+=(--find-links "$d"); done
    $PY -c "import imageio_ffmpeg" 2>/dev/null || command -v ffmpeg >/dev/null || WANT_FFMPEG=imageio-ffmpeg
    $PY -m pip install -q --no-index "${LINKS[@]}" zarr dask distributed librosa typer ${WANT_FFMPEG:-} 2>&1 | tail -3
    $PY -m pip install -q --no-index --no-deps "${LINKS[@]}" facenet-pytorch 2>&1 | tail -3  # it pins an older torch
fi
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 1 ]; then echo "error: no CUDA GPU visible to torch; this script is for a GPU machine" >&2; exit 2; fi
LAUNCH=("$PY")
[ "$GPUS" -gt 1 ] && LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc-per-node "$GPUS")
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"

$PY cli.py sample --out "$WORK/corpus" --actors 4 --sentences 2 >/dev/null
start=$(date +%s.%N)
$PY cli.py extract --dataset sample --root "$WORK/corpus" --store "$WORK/s.zarr" --device cuda --fusion concat \
    --workers 4 --no-progress 2>&1 | tail -2 | tee "$OUT/extract.log"
echo "extract (MTCNN on cuda, 48 clips, 4 workers): $(echo "$(date +%s.%N) - $start" | bc) s" | tee -a "$OUT/extract.log"

for encoder in resnet18 vgg16 simple3d i3d xattn; do
    fusion=concat; [ "$encoder" = xattn ] && fusion=none
    "${LAUNCH[@]}" cli.py train --encoder "$encoder" --fusion "$fusion" --store "$WORK/s.zarr" --epochs 1 --batch-size 16 \
        --device cuda --amp bf16 --out "$WORK/runs/$encoder" --no-progress > "$OUT/train-$encoder.log" 2>&1 \
        || { echo "$encoder FAILED (see $OUT/train-$encoder.log):"; tail -5 "$OUT/train-$encoder.log"; }
done

$PY - "$WORK/runs" "$OUT" <<'PY'
import json, sys
from pathlib import Path
runs, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = [json.loads(p.read_text()) for p in sorted(runs.glob("*/metrics.json"))]
lines = ["| encoder | fusion | GPUs | samples/s (epoch 1, incl. warm-up) | waiting for data | memory format | compiled | device |", "|---|---|---:|---:|---:|---|---|---|"]
for m in rows:
    plan = m.get("device_plan", {})
    lines.append(f"| {m['encoder']} | {m['fusion']} | {m['world_size']} | {m['samples_per_second']:.0f} | {100 * m.get('data_wait_fraction', float('nan')):.0f} % | "
                 f"{plan.get('memory_format')} | {plan.get('compiled')} | {m['device']} |")
(out / "gpu.md").write_text("\n".join(lines) + "\n")
(out / "gpu.json").write_text(json.dumps(rows, indent=1))
print("\n".join(lines))
PY
rm -rf "$WORK"
