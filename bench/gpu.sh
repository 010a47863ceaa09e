#!/usr/bin/env bash
# The prepared GPU check (issue 9), for one call on a lent GPU machine, from the repository root:
#
#     bash bench/gpu.sh            # results in $OUT (or /tmp/avstore-gpu): gpu.md, gpu.json, the run logs
#
# 1. installs what the machine's image lacks from wheels carried in .whl/ (bench/fetch_wheels.sh makes them);
# 2. makes a store on the spot from the sample corpus, with MTCNN on the GPU (extract --device cuda);
#    and once more with MTCNN on the CPU over all but two of the machine's cores (the many-core figure);
# 3. trains three epochs each of resnet18, vgg16, simple3d, i3d and xattn with bf16 AMP, under torchrun on
#    every GPU when there are several, each under TRAIN_TIMEOUT_S (default 150 s);
# 4. reports the first epoch's time (warm-up, compilation), the last epoch's samples/s, the fraction of step
#    time spent waiting for data, and the device plan, per encoder.
# Small on purpose (48 clips at 224 px, T=16): a few minutes in all, to fit a 15-minute device budget.
# Optional: CORPUS=dir, a sample corpus made elsewhere (`cli.py sample`), where the machine has no ffmpeg CLI;
# AVSTORE_SHARED_DATA=dir holding grid/*.mpg, to run tests/test_cuda.py first.
set -euo pipefail
OUT=${OUT:-/tmp/avstore-gpu}
PY=${PY:-python3}
WORK=$(mktemp -d)
LOGS=$WORK/logs  # one archive comes back, $OUT/logs.tgz: the device tool returns at most 8 files
mkdir -p "$OUT" "$LOGS"
if [ -d .whl ]; then  # wheels of what the image lacks (bench/fetch_wheels.sh), installed beside it without touching it
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/avstore-site .whl/*.whl 2>&1 | tail -3
    export PYTHONPATH=/tmp/avstore-site${PYTHONPATH:+:$PYTHONPATH}
fi
$PY -c "import zarr, dask.distributed, librosa, av, typer, facenet_pytorch, torchvision; print('imports ok: torch', __import__('torch').__version__)" \
    || { echo "error: a dependency is missing on this machine; carry its wheel in .whl (bench/fetch_wheels.sh)" >&2; exit 2; }
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 1 ]; then echo "error: no CUDA GPU visible to torch; this script is for a GPU machine" >&2; exit 2; fi
LAUNCH=("$PY")
[ "$GPUS" -gt 1 ] && LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc-per-node "$GPUS")
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"

# The GPU machine may have no ffmpeg CLI to generate the sample with: a corpus made elsewhere can travel (CORPUS=dir).
if [ -z "${CORPUS:-}" ]; then CORPUS="$WORK/corpus"; $PY cli.py sample --out "$CORPUS" --actors 4 --sentences 2 >/dev/null; fi
if [ -n "${AVSTORE_SHARED_DATA:-}" ]; then  # the GPU tests (MTCNN on CUDA against CPU on a GRID clip, a bf16 step)
    timeout 180 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$LOGS/test_cuda.log" 2>&1 || true
    tail -3 "$LOGS/test_cuda.log"
fi
now() { date +%s.%N; }
since() { $PY -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
CLIPS=$(ls "$CORPUS"/VideoFlash | wc -l)
for device in cuda cpu; do  # MTCNN on the GPU with 4 workers; then the CPU path on the machine's cores, for the scaling figure
    workers=4; [ "$device" = cpu ] && workers=$(( $(nproc) - 2 ))
    start=$(now)
    $PY cli.py extract --dataset sample --root "$CORPUS" --store "$WORK/s-$device.zarr" --device "$device" --fusion concat \
        --workers "$workers" --no-progress > "$LOGS/extract-$device.log" 2>&1 || { echo "extract on $device FAILED:"; tail -5 "$LOGS/extract-$device.log"; }
    echo "extract (MTCNN on $device, $CLIPS clips, $workers workers, $(nproc) cores): $(since "$start") s" | tee -a "$OUT/extract.txt"
done
for encoder in resnet18 vgg16 simple3d i3d xattn; do
    fusion=concat; [ "$encoder" = xattn ] && fusion=none
    timeout "${TRAIN_TIMEOUT_S:-150}" "${LAUNCH[@]}" cli.py train --encoder "$encoder" --fusion "$fusion" --store "$WORK/s-cuda.zarr" --epochs 3 --batch-size 16 \
        --device cuda --amp bf16 --out "$WORK/runs/$encoder" --no-progress > "$LOGS/train-$encoder.log" 2>&1 \
        || { echo "$encoder FAILED (see $LOGS/train-$encoder.log):"; tail -5 "$LOGS/train-$encoder.log"; }
done

$PY - "$WORK/runs" "$OUT" <<'PY'
import json, sys
from pathlib import Path
runs, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = [json.loads(p.read_text()) for p in sorted(runs.glob("*/metrics.json"))]
lines = ["| encoder | fusion | GPUs | epoch 1 s (warm-up, compile) | samples/s (last epoch) | waiting for data | memory format | compiled | device |", "|---|---|---:|---:|---:|---:|---|---|---|"]
for m in rows:
    plan = m.get("device_plan", {})
    seconds = [h["seconds"] for h in m["history"]]
    n_train = m["samples_per_second"] * m["seconds_per_epoch"]  # samples per epoch, all ranks
    lines.append(f"| {m['encoder']} | {m['fusion']} | {m['world_size']} | {seconds[0]:.1f} | {n_train / seconds[-1]:.0f} | {100 * m.get('data_wait_fraction', float('nan')):.0f} % | "
                 f"{plan.get('memory_format')} | {plan.get('compiled')} | {m['device']} |")
(out / "gpu.md").write_text("\n".join(lines) + "\n")
(out / "gpu.json").write_text(json.dumps(rows, indent=1))
print("\n".join(lines))
PY
tar czf "$OUT/logs.tgz" -C "$WORK" logs
rm -rf "$WORK"
