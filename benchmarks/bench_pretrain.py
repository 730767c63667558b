"""Pretraining speed: the DeepSpeed engine against a plain PyTorch loop, side by side.

    .venv/bin/python benchmarks/bench_pretrain.py [--arch resnet_demo] [--batch 64] [--size 56]
    .venv/bin/python benchmarks/bench_pretrain.py --device cuda --arch resnet50 --size 224 --batch 128 \
        --classes 18291 --precision bf16 --channels-last --json out.json     # on a GPU (gpu_check.sh)

Both loops train the same MultiLabelClassifier with the same batch, the same
optimizer (SGD momentum, as configs/pretrain/demo.yaml) and the same loss on
the same in-memory batches, so the difference is the engine's overhead
(target <= 5%). Blocks of steps alternate between the two loops so that
machine noise hits both alike; the medians of the blocks are reported.

On a CUDA machine it also measures ResNet-50 images/s with bf16 and
channels_last through the engine (the paper-scale throughput figure).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.nn import functional as F


def _model(arch: str, classes: int):
    from scaling.models.backbones import MultiLabelClassifier, build_backbone

    torch.manual_seed(0)
    return MultiLabelClassifier(build_backbone(arch), classes, prior=0.01)


def _plain_step(model, optimizer, images, targets):
    loss = F.binary_cross_entropy_with_logits(model(images).float(), targets, reduction="sum") / len(images)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _engine_step(engine, images, targets):
    loss = F.binary_cross_entropy_with_logits(engine(images).float(), targets, reduction="sum") / len(images)
    engine.backward(loss)
    engine.step()


def _block(step, steps: int, sync=lambda: None) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()  # GPU work is asynchronous: time it to its end
    return (time.perf_counter() - start) / steps


def compare(arch: str, batch: int, size: int, classes: int, blocks: int, steps: int, device: str = "cpu",
            precision: str = "fp32", channels_last: bool = False) -> dict:
    """Seconds per step of the plain loop and of the engine, on ``device`` in ``precision``
    (bf16/fp16: the model and inputs cast, as DeepSpeed casts them) and memory format."""
    from datascale.launch import ensure_process_group_env
    from scaling.pretrain.loop import build_engine

    ensure_process_group_env()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    images = torch.randn(batch, 3, size, size, device=device).to(dtype).contiguous(memory_format=memory)
    targets = (torch.rand(batch, classes, device=device) < 2.0 / classes).float()
    plain = _model(arch, classes).to(device, dtype).to(memory_format=memory)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    ds_model = _model(arch, classes).to(device).to(memory_format=memory)
    ds_opt = torch.optim.SGD(ds_model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    engine = build_engine(ds_model, ds_opt, None, {
        "train_micro_batch_size_per_gpu": batch, "gradient_accumulation_steps": 1,
        # DeepSpeed clips at 1.0 unless told otherwise; the plain loop does not clip.
        "gradient_clipping": 0.0, "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "zero_optimization": {"stage": 0}, "steps_per_print": 10 ** 9}, world_size=1)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    run_plain = lambda: _plain_step(plain, plain_opt, images, targets)  # noqa: E731
    run_engine = lambda: _engine_step(engine, images, targets)  # noqa: E731
    _block(run_plain, 3, sync), _block(run_engine, 3, sync)  # warm-up
    plain_t, engine_t = [], []
    for _ in range(blocks):
        plain_t.append(_block(run_plain, steps, sync))
        engine_t.append(_block(run_engine, steps, sync))
    p, e = statistics.median(plain_t), statistics.median(engine_t)
    return {"arch": arch, "batch": batch, "image_size": size, "classes": classes, "device": device,
            "precision": precision, "channels_last": channels_last,
            "plain_s_per_step": p, "deepspeed_s_per_step": e, "overhead": e / p - 1.0,
            "plain_images_per_s": batch / p, "deepspeed_images_per_s": batch / e}


def gpu_resnet50(batch: int, steps: int) -> dict:
    import deepspeed

    from datascale.launch import ensure_process_group_env

    ensure_process_group_env()
    model = _model("resnet50", 18291).cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, momentum=0.9, eps=1.0, weight_decay=1e-4)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config={
        "train_micro_batch_size_per_gpu": batch, "bf16": {"enabled": True},
        "zero_optimization": {"stage": 1}, "zero_allow_untested_optimizer": True,
        "steps_per_print": 10 ** 9})
    images = torch.randn(batch, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    images = images.to(torch.bfloat16)
    targets = (torch.rand(batch, 18291, device="cuda") < 1.26 / 18291).float()
    for _ in range(5):
        _engine_step(engine, images, targets)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        _engine_step(engine, images, targets)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"resnet50_bf16_images_per_s": batch * steps / elapsed, "batch": batch, "image_size": 224}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet_demo")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--classes", type=int, default=544)
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where both loops run")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="bf16/fp16 (GPU): model and inputs cast, as the engine does")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format (GPU tensor cores)")
    parser.add_argument("--no-resnet50", action="store_true", help="skip the ResNet-50 figure on a GPU")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    figures = {"compare": compare(args.arch, args.batch, args.size, args.classes, args.blocks, args.steps,
                                  args.device, args.precision, args.channels_last)}
    cpu = figures["compare"]
    print(f"{args.arch} batch {args.batch} at {args.size}px, {args.classes} classes, {args.device} "
          f"{args.precision}{' channels_last' if args.channels_last else ''}:")
    print(f"  plain PyTorch loop   {cpu['plain_s_per_step'] * 1e3:8.1f} ms/step  {cpu['plain_images_per_s']:7.1f} images/s")
    print(f"  DeepSpeed engine     {cpu['deepspeed_s_per_step'] * 1e3:8.1f} ms/step  {cpu['deepspeed_images_per_s']:7.1f} images/s")
    print(f"  engine overhead      {cpu['overhead'] * 100:+.1f}%  (target <= +5%)")
    if torch.cuda.is_available() and not args.no_resnet50:
        gpu = figures["resnet50"] = gpu_resnet50(batch=128, steps=30)
        print(f"GPU {torch.cuda.get_device_name()}: ResNet-50 bf16 channels_last, batch 128 at 224px, "
              f"18,291 classes: {gpu['resnet50_bf16_images_per_s']:.0f} images/s")
    elif not torch.cuda.is_available():
        print("no GPU here: the ResNet-50 bf16 figure needs a CUDA machine")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
