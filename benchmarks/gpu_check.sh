#!/usr/bin/env bash
# The GPU figures in one run (~8 minutes on one GPU), all written to $OUT/gpu_check.{json,md}:
#   1. benchmarks/bench_pretrain.py: ResNet-50, bf16, channels_last, DeepSpeed engine vs a plain loop
#   2. a 50-step detection fine-tune at paper size (finetune/detection_paper: ResNet-101 C4, 1024 px)
#   3. the loader's images/s with 16 workers, float and uint8 hand-over to the GPU (benchmarks/bench_loader.py)
#   4. tests/test_gpu_path.py (bf16/fp16 pretraining steps, one autocast fine-tuning step per task)
#
#   OUT=gpu_check_out bash benchmarks/gpu_check.sh          # on the GPU machine
#   bash benchmarks/gpu_check.sh --smoke                    # the same steps, tiny, on CPU (minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu_check_out}
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
if [ "${1:-}" = "--smoke" ]; then
  BENCH=(--device cpu --arch resnet_demo --size 32 --batch 8 --classes 20 --blocks 1 --steps 1 --no-resnet50)
  FINETUNE=(--config finetune/detection --arch resnet_demo --steps 2 --set train.batch_size=2)
  LOADER=(--images 40 --workers 2 --batch 8 --epochs 1)
  TESTS=0
else
  BENCH=(--device cuda --arch resnet50 --size 224 --batch 128 --classes 18291 --precision bf16 --channels-last
         --blocks 3 --steps 10)
  FINETUNE=(--config finetune/detection_paper --arch resnet101 --steps 50 --set train.log_every=10)
  LOADER=(--images 3000 --workers 16 --batch 64 --epochs 1 --device cuda)
  TESTS=1
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT/env.txt"

timeout 180 "$PY" benchmarks/bench_pretrain.py "${BENCH[@]}" --json "$OUT/bench_pretrain.json" | tee "$OUT/bench_pretrain.txt"

# The paper-sized detector on the tiny world's detection set (its images resized to 1024 px).
# The random backbone's batch-norm estimate runs on the CPU before the model moves to the GPU: off here.
timeout 60 "$PY" -m datascale.cli -q synth --config world/tiny --out "$OUT/world"
timeout 240 "$PY" -m datascale.cli finetune "${FINETUNE[@]}" --init random \
  --data "$OUT/world/detection" --set train.random_bn_batches=0 --set data.num_workers=4 \
  --out "$OUT/finetune_detection" --force | tee "$OUT/finetune_detection.txt"

timeout 120 "$PY" benchmarks/bench_loader.py "${LOADER[@]}" --json "$OUT/bench_loader.json" | tee "$OUT/bench_loader.txt"

if [ "$TESTS" = 1 ]; then
  timeout 240 "$PY" -m pytest tests/test_gpu_path.py -q -rs 2>&1 | tail -15 | tee "$OUT/test_gpu_path.txt" || true
fi

"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = [json.loads(l) for l in (out / "finetune_detection" / "metrics.jsonl").read_text().splitlines()]
steps = [r for r in runs if "seconds_per_step" in r]
figures = {"env": (out / "env.txt").read_text().strip(),
           "bench_pretrain": json.loads((out / "bench_pretrain.json").read_text()),
           "finetune_detection": {"steps": steps[-1]["step"], "seconds_per_step": steps[-1]["seconds_per_step"],
                                  "final_loss": steps[-1]["loss"],
                                  "metrics": json.loads((out / "finetune_detection" / "metrics.json").read_text())["metrics"]},
           "bench_loader": json.loads((out / "bench_loader.json").read_text())}
tests = out / "test_gpu_path.txt"
if tests.is_file():
    figures["test_gpu_path"] = tests.read_text().strip().splitlines()[-1]
(out / "gpu_check.json").write_text(json.dumps(figures, indent=2) + "\n")
c, d, l = figures["bench_pretrain"]["compare"], figures["finetune_detection"], figures["bench_loader"]
lines = ["# GPU check", "", f"{figures['env']}", "",
         f"- pretraining, {c['arch']} {c['precision']}{' channels_last' if c['channels_last'] else ''} batch {c['batch']} "
         f"at {c['image_size']} px on {c['device']}: engine {c['deepspeed_images_per_s']:.1f} images/s, plain loop "
         f"{c['plain_images_per_s']:.1f} images/s (engine overhead {c['overhead'] * 100:+.1f}%)"]
if "resnet50" in figures["bench_pretrain"]:
    lines.append(f"- ResNet-50 bf16 ZeRO-1, 18,291 classes: {figures['bench_pretrain']['resnet50']['resnet50_bf16_images_per_s']:.0f} images/s")
lines += [f"- detection fine-tune: {d['steps']} steps at {d['seconds_per_step']:.3f} s/step, final loss {d['final_loss']:.3f}",
          f"- loader ({l['workers']} workers): datascale {l['datascale loader']['images_per_s']:.0f} images/s "
          f"(uint8 hand-over {l['datascale, uint8 hand-over']['images_per_s']:.0f}), "
          f"ImageFolder {l['torchvision ImageFolder']['images_per_s']:.0f}, decode bound {l['decode-only bound']['images_per_s']:.0f}"]
if "test_gpu_path" in figures:
    lines.append(f"- tests/test_gpu_path.py: {figures['test_gpu_path']}")
(out / "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
