"""Write MNIST (or Fashion-MNIST) as a folder of PNGs, one subfolder per class.

    OUT/train/<class>/<index>.png   (60,000 images)
    OUT/test/<class>/<index>.png    (10,000 images)

The folder `dlcli train MODEL --data OUT` reads: the same data as the IDX files, through
the image-folder path, so both can be compared (same accuracy, same tensors). At native
size (28 px) the PNGs hold the IDX bytes exactly. `--size N` upscales with bicubic
resampling (Pillow's BICUBIC), e.g. `--size 64` for the DCGAN-64 check.

Usage:  python benchmarks/mnist_to_folder.py OUT [--data-dir ../shared/data]
        [--dataset mnist] [--size 64] [--limit N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from PIL import Image


def write_folder(out: Path, dataset: str = "mnist", data_dir=None, size: int | None = None,
                 limit: int | None = None) -> int:
    """Write the PNGs; returns how many. File names are the images' indices in the IDX
    files, zero-padded, so a folder's sorted order is the IDX order within each class."""
    from dlcli.data.mnist import load_images

    found = load_images(dataset, data_dir)
    written = 0
    for split, images, labels in (("train", found.train_x, found.train_y),
                                  ("test", found.test_x, found.test_y)):
        n = len(images) if limit is None else min(limit, len(images))
        for name in found.classes:
            (out / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            picture = Image.fromarray(images[i, 0].numpy(), mode="L")
            if size is not None and size != picture.width:
                picture = picture.resize((size, size), Image.Resampling.BICUBIC)
            picture.save(out / split / found.classes[int(labels[i])] / f"{i:05d}.png")
            written += 1
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder to write (new or empty)")
    parser.add_argument("--data-dir", help="where the IDX files are (as dlcli's --data-dir)")
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    parser.add_argument("--size", type=int, help="pixels per side (default: 28, the IDX bytes)")
    parser.add_argument("--limit", type=int, help="only the first N images of each split")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty; give a new folder")
    if args.size is not None and args.size < 1:
        parser.error("--size must be positive")
    start = time.perf_counter()
    n = write_folder(args.out, args.dataset, args.data_dir, args.size, args.limit)
    print(f"wrote {n:,} PNGs to {args.out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
