"""Benchmark: loader throughput against torchvision ImageFolder and the decode-only bound.

Same real-photo JPEGs (about 500x375), same worker count, same transform
(the paper's: shorter side 340, random 299 crop, flip, scale to [-1, 1]):

* decode-only bound: the loader's own decode + transform code in a tight
  loop, split over the same number of processes, no pipeline at all;
* ImageFolder: torchvision.datasets.ImageFolder + DataLoader with the usual
  torchvision transforms (Resize, RandomCrop, RandomHorizontalFlip, ToTensor,
  Normalize), shuffled;
* datascale: make_train_loader over shards of the same JPEGs, one epoch;
* datascale, uint8 hand-over: the same with ``pixels: uint8`` (the workers send
  uint8 batches; this process scales each to [-1, 1] with ``model_input``, as
  the training loop does, on ``--device``: the CPU, or cuda for the GPU hand-over).

Each is run twice, interleaved, and the better run is kept (the machine may
be shared). Prints images/s (wall) and images per CPU-second.

    .venv/bin/python benchmarks/bench_loader.py --images 1500 --workers 2 --epochs 2
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def jpeg_folder(root: Path, images: int, size: tuple[int, int] = (500, 375), seed: int = 0) -> Path:
    """ROOT/CLASS/N.jpg: ``images`` distinct JPEGs (quality 90) cut from real photos."""
    from skimage import data as skdata
    rng = np.random.default_rng(seed)
    photos = [getattr(skdata, name)() for name in PHOTOS]
    for i in range(images):
        rgb = photos[i % len(photos)]
        h, w = rgb.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = Image.fromarray(rgb[top: top + ch, left: left + cw])
        folder = root / PHOTOS[i % len(PHOTOS)]
        folder.mkdir(parents=True, exist_ok=True)
        out = io.BytesIO()
        crop.resize(size).save(out, format="JPEG", quality=90)
        (folder / f"{i:06d}.jpg").write_bytes(out.getvalue())
    return root


class Clock:
    """Wall time and CPU time of this process plus its finished children (and each part apart:
    ``main`` is this process, where batches arrive; ``children`` the worker processes)."""

    def __enter__(self) -> "Clock":
        self.wall0, self.main0, self.children0 = time.perf_counter(), self._cpu(SELF), self._cpu(CHILDREN)
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.main = self._cpu(SELF) - self.main0
        self.children = self._cpu(CHILDREN) - self.children0
        self.cpu = self.main + self.children

    @staticmethod
    def _cpu(who: int) -> float:
        usage = resource.getrusage(who)
        return usage.ru_utime + usage.ru_stime


SELF, CHILDREN = resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN


def warm_page_cache(root: Path) -> int:
    """Read every file under ``root`` once so that all runs see warm caches; returns bytes."""
    return sum(len(p.read_bytes()) for p in root.rglob("*") if p.is_file())


def _decode_share(args: tuple[list[str], int]) -> int:
    import torch
    from data_tools.loader.transforms import TRANSFORMS, to_unit_range
    # One thread, as DataLoader workers do: this process is forked from a parent whose OpenMP pool
    # has run (shard writing, the other loaders), and a forked child that enters that pool hangs
    # in libgomp for ever (seen: both workers asleep in copy_ inside to_unit_range).
    torch.set_num_threads(1)
    paths, batch = args
    transform = TRANSFORMS["paper"](299, True)
    rng = np.random.default_rng(0)
    arrays = []
    for path in paths:
        with open(path, "rb") as handle:
            arrays.append(transform(transform.decode(handle.read()), rng))
        if len(arrays) == batch:
            to_unit_range(np.stack(arrays))
            arrays = []
    return len(paths)


def decode_bound(files: list[str], workers: int, batch: int, epochs: int) -> int:
    shares = [(files[i::workers] * epochs, batch) for i in range(workers)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return sum(pool.map(_decode_share, shares))


def image_folder(tree: Path, workers: int, batch: int, epochs: int) -> int:
    import torch
    from torchvision import datasets, transforms
    pipeline = transforms.Compose([
        transforms.Resize(340), transforms.RandomCrop(299), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(tree), transform=pipeline),
                                         batch_size=batch, shuffle=True, num_workers=workers)
    return sum(len(images) for _ in range(epochs) for images, _ in loader)


def datascale_loader(shards: Path, workers: int, batch: int, epochs: int, pixels: str = "float",
                     device: str = "cpu") -> int:
    import torch
    from data_tools.loader.pipeline import LoaderConfig, make_train_loader
    from data_tools.loader.transforms import model_input
    cfg = LoaderConfig(batch_size=batch, num_workers=workers, shuffle_buffer=500,
                       transform="paper", pixels=pixels)
    loader = make_train_loader(shards, cfg, num_classes=len(PHOTOS))
    # Every batch becomes the model's float input on `device`, whichever side scales it.
    count = sum(len(model_input(b.images, device, torch.float32)) for _ in range(epochs) for b in loader)
    if device != "cpu":
        torch.cuda.synchronize()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs per run (amortises worker start-up for every method)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also run the bound and the loader in one process (CPU per image without IPC)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved rounds; ratios are also given as the median of per-round ratios")
    parser.add_argument("--json", metavar="FILE", help="also write the images/s figures to FILE")
    parser.add_argument("--device", default="cpu",
                        help="where datascale's batches go as the model's input (cuda: the GPU hand-over)")
    args = parser.parse_args()
    from data_tools.shards.write import ShardsConfig, write_shards
    with tempfile.TemporaryDirectory() as tmp:
        tree = jpeg_folder(Path(tmp) / "tree", args.images)
        shards = Path(tmp) / "shards"
        write_shards(tree, shards, ShardsConfig(samples_per_shard=100, workers=args.workers),
                     progress=False)
        megabytes = (warm_page_cache(tree) + warm_page_cache(shards)) / 2**20
        files = sorted(str(p) for p in tree.rglob("*.jpg"))
        common = (args.workers, args.batch, args.epochs)
        runs = {"decode-only bound": lambda: decode_bound(files, *common),
                "torchvision ImageFolder": lambda: image_folder(tree, *common),
                "datascale loader": lambda: datascale_loader(shards, *common, device=args.device),
                "datascale, uint8 hand-over": lambda: datascale_loader(shards, *common, pixels="uint8",
                                                                       device=args.device)}
        if args.breakdown:  # CPU per image with no worker processes: the pipeline without IPC
            runs["decode-only, 1 process"] = lambda: decode_bound(files, 1, args.batch, args.epochs)
            runs["datascale, 0 workers"] = lambda: datascale_loader(shards, 0, args.batch, args.epochs)
        best: dict[str, tuple[float, float]] = {}
        split: dict[str, tuple[float, float]] = {}  # ms of CPU per image: main process, workers
        rounds: list[dict[str, float]] = []  # wall images/s of every run, round by round
        for _ in range(args.rounds):
            rounds.append({})
            for name, run in runs.items():
                with Clock() as clock:
                    images = run()
                rate = (images / clock.wall, images / clock.cpu)
                rounds[-1][name] = rate[0]
                if rate > best.get(name, (0.0, 0.0)):
                    best[name] = rate
                    split[name] = (1e3 * clock.main / images, 1e3 * clock.children / images)
    print(f"{args.images} JPEGs ({megabytes / 2:.0f} MiB) x {args.epochs} epochs, {args.workers} "
          f"workers, batch {args.batch}, paper transform (340 -> random 299 crop, flip, [-1, 1])")
    bound, folder = best["decode-only bound"], best["torchvision ImageFolder"]
    for name, (wall, cpu) in best.items():
        print(f"  {name:28s} {wall:7.1f} images/s  {cpu:7.1f} images/CPU-s  "
              f"wall x{wall / bound[0]:.3f} of bound, x{wall / folder[0]:.3f} of ImageFolder; "
              f"CPU x{cpu / bound[1]:.3f} of bound, x{cpu / folder[1]:.3f} of ImageFolder; "
              f"CPU ms/image main {split[name][0]:.2f}, workers {split[name][1]:.2f}")
    # Paired within a round (runs a minute apart see the same machine): robust to a noisy host.
    paired = {name: (float(np.median([r[name] / r["decode-only bound"] for r in rounds])),
                     float(np.median([r[name] / r["torchvision ImageFolder"] for r in rounds])))
              for name in best}
    print(f"  median of {args.rounds} per-round wall ratios:")
    for name, (of_bound, of_folder) in paired.items():
        print(f"    {name:28s} x{of_bound:.3f} of bound, x{of_folder:.3f} of ImageFolder")
    if args.json:
        figures = {"images": args.images, "workers": args.workers, "batch": args.batch, "epochs": args.epochs,
                   "rounds": rounds,
                   **{name: {"images_per_s": wall, "images_per_cpu_s": cpu,
                             "median_ratio_of_bound": paired[name][0],
                             "median_ratio_of_image_folder": paired[name][1]}
                      for name, (wall, cpu) in best.items()}}
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
