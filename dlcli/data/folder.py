"""A folder of your own images (`--data DIR`), decoded once into a memory-mapped cache.

Layout (torchvision ImageFolder's): class subfolders give the labels, their names sorted;
a folder without subfolders is unlabeled. A folder with `train/` and `test/` (or `val/`)
subfolders, each laid out that way, gives those splits. Files are found recursively,
hidden ones (".DS_Store") skipped, symlinks followed (a loop is noticed, not followed).

The first run decodes every image once, in parallel worker processes, to one shape
(`image_size`, `image_channels`, `resize`), streaming the pixels into a uint8 file in the
cache folder; later runs memory-map that file, so they start in about a second and hold
only the pages a batch touches, however large the folder. The cache is keyed by the
folder's path, every file's name, size and modification time, and the preprocessing
keys: change a file and the next run decodes again. The dataset's sha256 (provenance) is
that key's hash: it names exactly these files, decoded this way.

Files that are not usable images (not an image, empty, truncated, too large to decode
safely, too small, unreadable) are skipped with one warning that counts them.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import stat
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dlcli.console import console, notice, warn
from dlcli.data import decode as images_decode
from dlcli.data.files import cache_dir
from dlcli.data.images import ImageData
from dlcli.errors import DlcliError

CACHE_VERSION = 1  # bump when decoding changes: old caches are then never read
SPLIT_NAMES = ("train", "val", "test")
FALLBACK_SIZE = 64  # image_size when the images differ in size and none was given
CHUNK_BYTES = 8 * 2**20  # decoded pixels per job sent back by a worker
IN_PROCESS_BELOW = 256  # fewer files than this: decode here, a pool costs more than it saves


@dataclass
class Entry:
    path: str
    rel: str  # path inside the folder, for the cache key and messages
    size: int
    mtime_ns: int
    label: int
    split: str  # "train" | "val" | "test"; "train" when the folder has no split subfolders


# ---- finding the files -------------------------------------------------------------------

def _walk(folder: Path, seen: set, loops: list) -> list[tuple[str, os.stat_result]]:
    """Every non-hidden file under folder, recursively, sorted; symlinked folders are
    followed once (a link back to a folder already seen is a loop: noted, not followed)."""
    found, stack = [], [folder]
    while stack:
        here = stack.pop()
        try:
            info = here.stat()
            if (info.st_dev, info.st_ino) in seen:
                loops.append(str(here))
                continue
            seen.add((info.st_dev, info.st_ino))
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError as e:  # an unreadable folder, or a link that loops on itself
            loops.append(f"{here} ({e.strerror or e})")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                info = entry.stat()  # follows a symlink
            except OSError:  # a broken link or a link loop to itself
                found.append((entry.path, None))
                continue
            if stat.S_ISDIR(info.st_mode):
                stack.append(Path(entry.path))
            elif stat.S_ISREG(info.st_mode):
                found.append((entry.path, info))
    return sorted(found)


def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir())
    except OSError as e:
        raise DlcliError(f"cannot read {folder}: {e.strerror or e}") from None


def scan(root: Path) -> tuple[list[Entry], list[str], list[tuple[str, str]]]:
    """(entries, class names, (file, why) for files that cannot even be looked at)."""
    subs = {p.name: p for p in _subfolders(root)}
    if "train" in subs and ("test" in subs or "val" in subs):
        trees = {split: subs[split] for split in SPLIT_NAMES if split in subs}
    else:
        trees = {"train": root}
    class_dirs = {split: _subfolders(tree) for split, tree in trees.items()}
    labeled = {split: bool(dirs) for split, dirs in class_dirs.items()}
    if len(set(labeled.values())) > 1:
        raise DlcliError(f"{root}: some splits have class subfolders and some do not ("
                         + ", ".join(f"{s}/: {'classes' if v else 'flat'}" for s, v in labeled.items())
                         + "); lay out every split the same way")
    classes = sorted({d.name for dirs in class_dirs.values() for d in dirs})
    entries, broken, loops, seen = [], [], [], set()
    loose = 0  # files beside class folders: ImageFolder ignores them, so do we (and say so)
    for split, tree in trees.items():
        if classes:
            groups = [(classes.index(d.name), d) for d in class_dirs[split]]
            loose += sum(1 for p in tree.iterdir() if p.is_file() and not p.name.startswith("."))
        else:
            groups = [(0, tree)]
        prefix = len(str(root)) + 1  # a file's path inside root (relpath is slow for 100,000)
        for label, folder in groups:
            for path, info in _walk(folder, seen, loops):
                rel = path[prefix:]
                if info is None:
                    broken.append((rel, "broken link"))
                else:
                    entries.append(Entry(path, rel, info.st_size, info.st_mtime_ns, label, split))
    if loops:
        notice(f"{root}: {len(loops)} symlinked folder(s) lead back to a folder already read "
               f"(a loop, or the same folder twice), not followed: {', '.join(loops[:3])}")
    if loose:
        notice(f"{root}: {loose} file(s) beside the class folders ignored (only files inside "
               "a class folder have a label)")
    return entries, classes, broken


# ---- the cache ---------------------------------------------------------------------------

def _prefs(config: dict) -> dict:
    """The preprocessing keys, checked; they are part of the cache key."""
    from dlcli.config import IMAGE_KEYS, check_image_keys

    prefs = {key: config.get(key, IMAGE_KEYS[key]) for key in ("image_size", "image_channels", "resize")}
    prefs["image_channels"] = str(prefs["image_channels"])
    check_image_keys(prefs)
    return prefs


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive lock on path (waiting for it) where the system has flock."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; a second decoder's result is simply not used
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _digest(*parts) -> str:
    return hashlib.sha256("\n".join(map(str, parts)).encode()).hexdigest()


def _workers() -> int:
    """Decoding processes: --threads (OMP_NUM_THREADS) when given, else one per core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return max(1, cores or 1)


@contextlib.contextmanager
def _pool(files: int):
    """Worker processes for decoding, or None when one process is as quick."""
    workers = _workers()
    if workers <= 1 or files < IN_PROCESS_BELOW:
        yield None
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # forkserver/spawn: a clean child (a fork after torch's threads started can hang)
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _map(pool, fn, jobs: list, what: str, total: int, count=len):
    """fn over jobs, in the pool's processes if any; results in job order, yielded as they
    come (so the caller can stream them to disk). A worker that dies (a codec crash, the
    out-of-memory killer) is an error, not a hang: hence an executor, not Pool.imap."""
    from concurrent.futures.process import BrokenProcessPool

    from rich.progress import Progress

    results = map(fn, jobs) if pool is None else _in_order(pool, fn, jobs)
    with Progress(*Progress.get_default_columns(), console=console, transient=True) as progress:
        bar = progress.add_task(what, total=total)
        try:
            for job, result in zip(jobs, results):
                progress.advance(bar, count(job))
                yield result
        except BrokenProcessPool:
            raise DlcliError(f"a worker process died while {what} (out of memory?); try "
                             "--threads 1, or a smaller image_size") from None


def _in_order(pool, fn, jobs: list):
    """pool.map, with at most a few jobs ahead of the one awaited: finished results wait
    for a slow one in memory, so an unbounded map could hold the whole folder's pixels."""
    ahead = deque()
    upcoming = iter(jobs)
    for job in itertools.islice(upcoming, 4 * _workers()):
        ahead.append(pool.submit(fn, job))
    while ahead:
        result = ahead.popleft().result()
        for job in itertools.islice(upcoming, 1):
            ahead.append(pool.submit(fn, job))
        yield result


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _skipped_warning(root: Path, skipped: list, total: int) -> None:
    if skipped:
        named = ", ".join(f"{rel} ({why})" for rel, why in skipped[:3])
        more = f" and {len(skipped) - 3:,} more" if len(skipped) > 3 else ""
        warn(f"{root}: skipped {len(skipped):,} of {total:,} files that are not usable images: "
             f"{named}{more}")


def _choose_shape(root: Path, probes: list, prefs: dict) -> tuple[int, int, int]:
    sizes = {(h, w) for w, h, _ in probes}
    if prefs["image_size"] is not None:
        height = width = prefs["image_size"]
    elif len(sizes) == 1:
        height, width = sizes.pop()
        if max(height, width) > 512:
            notice(f"{root}: keeping the images' own size, {width}x{height}, which is large for "
                   "these models and their cache; set image_size (e.g. 64) to shrink them")
    else:
        examples = ", ".join(f"{w}x{h}" for h, w in sorted(sizes)[:3])
        notice(f"{root}: the images differ in size ({examples}, ...); making them "
               f"{FALLBACK_SIZE}x{FALLBACK_SIZE} (set image_size to choose)")
        height = width = FALLBACK_SIZE
    if prefs["image_channels"] == "auto":
        channels = 1 if all(gray for _, _, gray in probes) else 3
    else:
        channels = int(prefs["image_channels"])
    return channels, height, width


def _check_space(folder: Path, nbytes: int) -> None:
    free = shutil.disk_usage(folder).free
    if nbytes > free:
        raise DlcliError(f"the decoded images need {nbytes / 2**30:.1f} GiB in {folder}, which has "
                         f"{free / 2**30:.1f} GiB free; choose a smaller image_size or free space "
                         "(the cache folder follows $XDG_CACHE_HOME)")


def build_cache(root: Path, entries: list[Entry], classes: list[str], broken: list,
                prefs: dict, target: Path) -> None:
    """Decode every file into target/ (pixels.u8, stats.f64, index.json), atomically: it is
    written as a sibling folder and renamed into place when complete."""
    with _pool(len(entries)) as pool:
        _build(pool, root, entries, classes, broken, prefs, target)


def _build(pool, root, entries, classes, broken, prefs, target) -> None:
    paths = [e.path for e in entries]
    probes = [p for chunk in _map(pool, images_decode.probe_chunk, _chunks(paths, 64),
                                  f"reading {len(paths):,} image headers", len(paths))
              for p in chunk]
    skipped = list(broken)
    usable = []
    for entry, found in zip(entries, probes):
        if isinstance(found, str):
            skipped.append((entry.rel, found))
        else:
            usable.append((entry, found))
    if not usable:
        _skipped_warning(root, skipped, len(entries) + len(broken))
        raise DlcliError(f"{root}: none of its {len(entries) + len(broken):,} files is a usable "
                         "image (PNG, JPEG, BMP, WebP, GIF, TIFF)")
    channels, height, width = _choose_shape(root, [f for _, f in usable], prefs)
    row_bytes = channels * height * width
    target.parent.mkdir(parents=True, exist_ok=True)
    _check_space(target.parent, row_bytes * len(usable))
    part = target.with_name(f"{target.name}.part-{os.getpid()}")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir()
    try:
        pixels = np.memmap(part / "pixels.u8", np.uint8, "w+", shape=(len(usable), row_bytes))
        per_job = max(1, min(256, CHUNK_BYTES // row_bytes))
        jobs = [([i for i, _ in chunk], [e.path for _, (e, _) in chunk], height, width, channels,
                 prefs["resize"]) for chunk in _chunks(list(enumerate(usable)), per_job)]
        rows, kept, sums = 0, [], []
        for done, decoded, stats, failed in _map(pool, images_decode.decode_chunk, jobs,
                                                 f"decoding {len(usable):,} images", len(usable),
                                                 count=lambda job: len(job[0])):
            pixels[rows:rows + len(done)] = decoded.reshape(len(done), row_bytes)
            rows += len(done)
            kept += [usable[i][0] for i in done]
            sums.append(stats)
            skipped += [(usable[i][0].rel, why) for i, why in failed]
        pixels.flush()
        del pixels
        if rows == 0:
            _skipped_warning(root, skipped, len(entries) + len(broken))
            raise DlcliError(f"{root}: none of its images could be decoded")
        os.truncate(part / "pixels.u8", rows * row_bytes)  # rows of files that failed to decode
        np.concatenate(sums).tofile(part / "stats.f64")
        index = {"version": CACHE_VERSION, "root": str(root), "shape": [channels, height, width],
                 "classes": classes, "labels": [e.label for e in kept],
                 "splits": [SPLIT_NAMES.index(e.split) for e in kept],
                 "files": len(entries) + len(broken), "skipped": skipped, **prefs}
        (part / "index.json").write_text(json.dumps(index, ensure_ascii=False), encoding="utf-8")
        for name in ("pixels.u8", "stats.f64", "index.json"):
            with open(part / name, "rb+") as f:
                os.fsync(f.fileno())
        try:
            part.rename(target)
        except OSError:  # another run finished the same cache first: use theirs
            if not (target / "index.json").is_file():
                raise
    finally:
        shutil.rmtree(part, ignore_errors=True)


# ---- splits and statistics ---------------------------------------------------------------

def _splits(root: Path, split_codes: torch.Tensor, val_fraction: float, seed: int):
    """(train, val, test) row indices. The folder's own val/ and test/ when it has them;
    otherwise val_fraction of the training rows, drawn by the seed, held out for
    validation; with no test/ the validation rows are the test rows too."""
    rows = {name: torch.nonzero(split_codes == i).flatten() for i, name in enumerate(SPLIT_NAMES)}
    train, val, test = rows["train"], rows["val"], rows["test"]
    if len(val) == 0:
        if len(train) == 1:
            notice(f"{root}: one image only; it is trained, validated and tested on")
            val = train
        elif val_fraction > 0:
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
            held = min(len(train) - 1, max(1, round(val_fraction * len(train))))
            val, train = train[order[:held]].sort().values, train[order[held:]].sort().values
        elif len(test) == 0:
            raise DlcliError(f"{root} has no test/ or val/ folder, and val_fraction is 0: "
                             "nothing is left to validate on; set val_fraction above 0")
        else:
            val = test
    if len(test) == 0:
        test = val
    return train, val, test


def _mean_std(stats: np.ndarray, rows: torch.Tensor, pixels_per_channel: int):
    """Per-channel mean and std in [0, 1] of the given rows, from their exact sums."""
    total = stats[rows.numpy()].sum(0)  # (C, 2)
    n = len(rows) * pixels_per_channel
    mean = total[:, 0] / n / 255
    var = np.maximum(total[:, 1] / n / 255**2 - mean**2, 0)
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in np.sqrt(var))


# ---- the data set ------------------------------------------------------------------------

def folder_of(config: dict) -> Path:
    data = config.get("data")
    paths = [data] if isinstance(data, str) else list(data or [])
    if len(paths) != 1:
        raise DlcliError(f"an image model takes one folder of images (--data DIR), got {len(paths)}")
    root = Path(paths[0]).expanduser()
    if not root.exists():
        raise DlcliError(f"--data {root}: no such folder")
    if not root.is_dir():
        raise DlcliError(f"--data {root} is a file; image models take a folder of images "
                         "(class subfolders give the labels)")
    return root.resolve()


def load_folder(config: dict) -> ImageData:
    root = folder_of(config)
    prefs = _prefs(config)
    entries, classes, broken = scan(root)
    if not entries and not broken:
        raise DlcliError(f"{root} holds no files; put images in it (one subfolder per class, "
                         "or all in one folder for unlabeled images)")
    where = _digest(CACHE_VERSION, root, json.dumps(prefs, sort_keys=True))[:16]
    files = _digest(*(f"{e.rel}\t{e.size}\t{e.mtime_ns}\t{e.label}\t{e.split}" for e in entries),
                    *(rel for rel, _ in broken), json.dumps(classes, ensure_ascii=False))[:16]
    images_dir = cache_dir() / "images"
    target = images_dir / f"{where}-{files}"
    if not (target / "index.json").is_file():
        images_dir.mkdir(parents=True, exist_ok=True)
        with _locked(images_dir / f"{where}.lock"):  # one decoder (DDP ranks start together)
            if not (target / "index.json").is_file():
                older = list(images_dir.glob(f"{where}-*"))  # finished, or left by a killed run
                if any(".part-" not in p.name for p in older):
                    notice(f"{root} changed since it was decoded; decoding it again")
                build_cache(root, entries, classes, broken, prefs, target)
                for old in older:  # the folder's previous state, decoded the same way: stale
                    shutil.rmtree(old, ignore_errors=True)
    try:
        index = json.loads((target / "index.json").read_text(encoding="utf-8"))
        channels, height, width = index["shape"]
        n = len(index["labels"])
        stats = np.fromfile(target / "stats.f64", dtype=np.float64).reshape(n, channels, 2)
        pixels = torch.from_file(str(target / "pixels.u8"), shared=False,
                                 size=n * channels * height * width, dtype=torch.uint8)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        shutil.rmtree(target, ignore_errors=True)
        raise DlcliError(f"the decoded cache of {root} was damaged ({e}); it is removed, run "
                         "again to decode anew") from None
    _skipped_warning(root, [tuple(s) for s in index["skipped"]], index["files"])
    images = pixels.view(n, channels, height, width)
    labels = torch.tensor(index["labels"], dtype=torch.int64)
    train, val, test = _splits(root, torch.tensor(index["splits"]),
                               float(config.get("val_fraction", 0.1)), int(config.get("seed", 0)))
    mean, std = _mean_std(stats, train, height * width)
    return ImageData("folder", (channels, height, width), list(index["classes"]), images, labels,
                     train, test, f"{root} (decoded in {target})", mean, std,
                     _digest(where, files), val)
