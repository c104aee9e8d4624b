"""The image data layer: folders of your own images, the decode cache, CIFAR-10, `datasets`.

Every picture is made here with Pillow, a few pixels wide; nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli
from PIL import Image

from dlcli.data import cifar, folder
from dlcli.data.images import load_image_data
from dlcli.errors import DlcliError


def picture(path: Path, size=(12, 10), color=(200, 30, 60), mode="RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save)
    return path


def noise(path: Path, size=(12, 10), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def load(root: Path, **keys):
    return load_image_data({"data": [str(root)], "seed": 0, **keys})


def two_classes(root: Path, per_class=5) -> Path:
    for c, name in enumerate(("zebra", "ant")):
        for i in range(per_class):
            noise(root / name / f"{i}.png", seed=10 * c + i)
    return root


# ---- layout, labels, splits --------------------------------------------------------------

def test_class_subfolders_give_sorted_labels_and_a_seeded_split(tmp_path):
    data = load(two_classes(tmp_path / "pics"), image_size=8)
    assert data.name == "folder" and data.classes == ["ant", "zebra"]  # sorted, as ImageFolder
    assert data.shape == (3, 8, 8) and data.images.shape == (10, 3, 8, 8)
    assert data.images.dtype == torch.uint8 and data.labels.tolist() == [0] * 5 + [1] * 5
    assert len(data.val) == 1 and torch.equal(data.test, data.val)  # no test/: val is the test
    assert sorted(torch.cat([data.train, data.val]).tolist()) == list(range(10))
    again = load(tmp_path / "pics", image_size=8)
    other = load(tmp_path / "pics", image_size=8, seed=1, val_fraction=0.3)
    assert torch.equal(again.val, data.val) and len(other.val) == 3
    assert all(0 <= m <= 1 for m in data.mean) and all(s > 0 for s in data.std)
    assert data.describe()["classes"] == ["ant", "zebra"] and len(data.sha256) == 64


def test_flat_folder_is_unlabeled_and_keeps_its_own_size(tmp_path):
    for i in range(4):
        noise(tmp_path / "flat" / f"{i}.png", size=(20, 12), seed=i)
    data = load(tmp_path / "flat")  # image_size null: every image is 20 x 12, so that
    assert data.classes == [] and not data.labeled and data.shape == (3, 12, 20)
    pixels = np.asarray(Image.open(tmp_path / "flat" / "2.png")).transpose(2, 0, 1)
    assert np.array_equal(data.images[2].numpy(), pixels)  # own size: the bytes as they are


def test_differing_sizes_without_image_size_become_64_with_a_notice(tmp_path, capsys):
    noise(tmp_path / "d" / "a.png", size=(20, 12))
    noise(tmp_path / "d" / "b.png", size=(30, 30))
    assert load(tmp_path / "d").shape == (3, 64, 64)
    assert "differ in size" in capsys.readouterr().err


def test_train_test_and_val_subfolders_are_the_splits(tmp_path):
    two_classes(tmp_path / "s" / "train", 4)
    two_classes(tmp_path / "s" / "test", 2)
    data = load(tmp_path / "s", image_size=8, val_fraction=0.25)
    assert len(data.test) == 4 and len(data.val) == 2 and len(data.train) == 6
    assert set(data.test.tolist()).isdisjoint(torch.cat([data.train, data.val]).tolist())
    two_classes(tmp_path / "v" / "train", 4)
    two_classes(tmp_path / "v" / "val", 1)
    data = load(tmp_path / "v", image_size=8)
    assert len(data.val) == 2 and torch.equal(data.test, data.val) and len(data.train) == 8


def test_class_names_with_spaces_and_non_ascii_letters(tmp_path):
    for name in ("ankle boot", "Äpfel", "猫"):
        picture(tmp_path / "c" / name / "x.png")
    assert load(tmp_path / "c").classes == sorted(["ankle boot", "Äpfel", "猫"])


def test_one_class_with_one_image_trains_validates_and_tests_on_it(tmp_path, capsys):
    picture(tmp_path / "one" / "only" / "x.png")
    data = load(tmp_path / "one")
    assert data.classes == ["only"] and data.train.tolist() == data.val.tolist() == [0]
    assert "one image only" in capsys.readouterr().err


def test_an_empty_folder_or_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    with pytest.raises(DlcliError, match="holds no files"):
        load(tmp_path / "empty")
    with pytest.raises(DlcliError, match="no such folder"):
        load(tmp_path / "missing")
    picture(tmp_path / "f.png")
    with pytest.raises(DlcliError, match="is a file"):
        load(tmp_path / "f.png")


# ---- pixels ------------------------------------------------------------------------------

def test_mixed_modes_decode_to_rgb_and_16_bit_is_scaled_not_clipped(tmp_path):
    d = tmp_path / "mixed"
    picture(d / "rgb.png", color=(10, 20, 30))
    picture(d / "gray.png", mode="L", color=100)
    picture(d / "rgba.png", mode="RGBA", color=(0, 0, 0, 0))  # transparent: onto white
    Image.new("RGB", (12, 10), (0, 0, 255)).convert("P").save(d / "palette.png")
    Image.fromarray(np.full((10, 12), 32896, np.uint16)).save(d / "deep.png")  # 16-bit gray
    Image.new("RGB", (12, 10), (5, 6, 7)).save(d / "photo.jpg", quality=100)
    picture(d / "anim.gif", mode="L", color=40)
    picture(d / "pic.webp", color=(1, 2, 3))
    picture(d / "pic.tif", color=(1, 2, 3))
    data = load(d)
    assert data.shape == (3, 10, 12) and len(data.images) == 9
    by_name = dict(zip(sorted(p.name for p in d.iterdir()), data.images))
    assert by_name["rgb.png"][:, 0, 0].tolist() == [10, 20, 30]
    assert by_name["gray.png"][:, 0, 0].tolist() == [100] * 3
    assert by_name["rgba.png"][:, 0, 0].tolist() == [255] * 3
    assert by_name["palette.png"][:, 0, 0].tolist() == [0, 0, 255]
    assert by_name["deep.png"][:, 0, 0].tolist() == [128] * 3  # 32896 / 257


def test_all_grayscale_images_give_one_channel(tmp_path):
    d = tmp_path / "gray"
    picture(d / "a.png", mode="L", color=7)
    picture(d / "b.png", mode="1", color=1)
    Image.fromarray(np.full((10, 12), 65535, np.uint16)).save(d / "c.png")
    Image.new("L", (12, 10), 9).convert("P").save(d / "d.gif")
    data = load(d)
    assert data.shape == (1, 10, 12)
    assert data.images[:, 0, 0, 0].tolist() == [7, 255, 255, 9]
    assert load(d, image_channels="3").shape == (3, 10, 12)


def test_exif_rotated_photos_are_turned_upright(tmp_path):
    left_red = np.zeros((10, 20, 3), np.uint8)
    left_red[:, :10, 0] = 255  # a 20 x 10 photo: left half red, right half black
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    (tmp_path / "r").mkdir()
    Image.fromarray(left_red).save(tmp_path / "r" / "p.jpg", exif=exif, quality=100)
    data = load(tmp_path / "r")
    assert data.shape == (3, 20, 10)  # upright: 10 wide, 20 high
    red = data.images[0, 0].float()
    assert red[:8].mean() > 200 and red[12:].mean() < 50  # the left half is now on top


def test_big_jpegs_decoded_at_a_reduced_scale_match_a_full_decode(tmp_path):
    """JPEGs much larger than image_size are decoded by libjpeg at 1/2, 1/4 or 1/8 scale
    (draft mode): the result must still be the centre crop of the upright photo."""
    from PIL import ImageOps

    y, x = np.mgrid[0:300, 0:400]
    smooth = np.stack([x * 255 // 400, y * 255 // 300, (x + y) * 255 // 700], -1).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "big").mkdir()
    Image.fromarray(smooth).save(tmp_path / "big" / "photo.jpg", exif=exif, quality=95)
    got = load(tmp_path / "big", image_size=32).images[0].numpy().astype(int)
    with Image.open(tmp_path / "big" / "photo.jpg") as full:  # upright, square crop, resize
        upright = ImageOps.exif_transpose(full.convert("RGB"))
        w, h = upright.size
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        want = np.asarray(upright.resize((32, 32), Image.Resampling.BILINEAR, box=box)).transpose(2, 0, 1)
    assert got.shape == (3, 32, 32) and np.abs(got - want).mean() < 3


def test_folder_dataset_without_data_and_non_image_datasets_are_refused():
    with pytest.raises(DlcliError, match="needs the folder: --data DIR"):
        load_image_data({"dataset": "folder"})
    with pytest.raises(DlcliError, match="not an image dataset"):
        load_image_data({"dataset": "xor"})


@pytest.mark.parametrize("resize,top_row", [("center-crop", 255), ("pad", 0), ("stretch", 255)])
def test_resize_modes(tmp_path, resize, top_row):
    picture(tmp_path / "w" / "wide.png", size=(40, 20), color=(255, 255, 255))
    image = load(tmp_path / "w", image_size=10, resize=resize).images[0, 0]
    assert image.shape == (10, 10)
    assert image[0].float().mean() == top_row and image[5].float().mean() == 255
    if resize == "pad":  # the 40 x 20 image fits as 10 x 5, black above and below
        assert image[:2].max() == 0 and image[3:7].min() == 255


def test_bad_preprocessing_keys_are_refused(tmp_path):
    two_classes(tmp_path / "k", 1)
    for keys, words in (({"resize": "squash"}, "unknown resize"),
                        ({"image_channels": 2}, "image_channels must be 1, 3 or auto"),
                        ({"image_size": 0}, "image_size must be")):
        with pytest.raises(DlcliError, match=words):
            load(tmp_path / "k", **keys)


# ---- bad files ---------------------------------------------------------------------------

def png_header_claiming(path: Path, width: int, height: int) -> Path:
    """A real 1x1 PNG whose header is rewritten to say width x height: a decompression
    bomb's header, without making the bomb (the check must refuse it from the header)."""
    picture(path, size=(1, 1), mode="L", color=0)
    raw = bytearray(path.read_bytes())
    ihdr = raw[12:29]  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(raw))
    return path


def test_broken_files_are_skipped_with_one_warning_that_counts_them(tmp_path, capsys):
    d = tmp_path / "bad" / "things"
    for i in range(3):
        noise(d / f"good{i}.png", seed=i)
    (d / "notes.txt").write_text("not a picture")
    (d / "empty.jpg").write_bytes(b"")
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(jpeg, "JPEG")
    (d / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    picture(d / "dot.png", size=(1, 1))
    png_header_claiming(d / "bomb.png", 20_000, 20_000)
    os.symlink(d / "nowhere.png", d / "dangling.png")
    (d / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: not even counted
    data = load(tmp_path / "bad", image_size=8)
    assert len(data.images) == 3
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert "skipped 6 of 9 files" in warnings[0] and "and 3 more" in warnings[0]
    reasons = dict(json.loads((next((tmp_path / "cache").rglob("index.json"))).read_text())["skipped"])
    assert reasons == {"things/bomb.png": reasons["things/bomb.png"], "things/dangling.png": "broken link",
                       "things/dot.png": "too small (1x1)", "things/empty.jpg": "empty file",
                       "things/notes.txt": "not an image", "things/truncated.jpg": "truncated"}
    assert reasons["things/bomb.png"].startswith("too large (20000x20000")


def test_a_bomb_is_refused_from_its_header_without_decoding(tmp_path):
    from dlcli.data.decode import probe

    bomb = png_header_claiming(tmp_path / "bomb.png", 20_000, 20_000)
    assert probe(str(bomb)).startswith("too large")
    assert probe(str(png_header_claiming(tmp_path / "huge.png", 100_000, 100_000))).startswith("too large")


def test_a_folder_of_only_broken_files_is_an_error(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.raises(DlcliError, match="none of its 1 files is a usable image"):
        load(tmp_path / "junk")


def test_a_symlink_loop_is_read_once(tmp_path, capsys):
    two_classes(tmp_path / "loop", 2)
    os.symlink(tmp_path / "loop", tmp_path / "loop" / "ant" / "again")
    data = load(tmp_path / "loop", image_size=8)
    assert len(data.images) == 4
    assert "lead back to a folder already read" in capsys.readouterr().err


def test_unreadable_files_are_skipped(tmp_path, capsys, monkeypatch):
    from dlcli.data import decode

    two_classes(tmp_path / "u", 2)
    locked = noise(tmp_path / "u" / "ant" / "locked.png")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            # root reads whatever the mode says: chmod 000 cannot lock it, so the refusal
            # the kernel would give is given by the opener instead
            real_open = decode.Image.open

            def refuse(path, *args):
                if str(path) == str(locked):
                    raise PermissionError(13, "Permission denied", str(path))
                return real_open(path, *args)

            monkeypatch.setattr(decode.Image, "open", refuse)
        data = load(tmp_path / "u", image_size=8)
        assert len(data.images) == 4
        assert "ant/locked.png (unreadable: permission denied)" in capsys.readouterr().err
    finally:
        locked.chmod(0o644)


# ---- the cache ---------------------------------------------------------------------------

def test_second_run_memory_maps_the_cache_and_a_change_decodes_again(tmp_path, monkeypatch, capsys):
    root = two_classes(tmp_path / "pics", 3)
    first = load(root, image_size=8)
    cache = tmp_path / "cache" / "dlcli" / "images"
    caches = [p for p in cache.iterdir() if p.is_dir()]
    assert len(caches) == 1 and (caches[0] / "pixels.u8").stat().st_size == 6 * 3 * 8 * 8

    def no_decoding(job):
        raise AssertionError("decoded again")

    with monkeypatch.context() as m:
        m.setattr(folder.images_decode, "decode_chunk", no_decoding)
        second = load(root, image_size=8)
    assert torch.equal(first.images, second.images) and first.sha256 == second.sha256
    left_behind = cache / (caches[0].name.split("-")[0] + "-0123.part-1")  # by a killed run
    left_behind.mkdir()
    noise(root / "ant" / "new.png", seed=99)
    capsys.readouterr()
    third = load(root, image_size=8)
    assert len(third.images) == 7 and third.sha256 != first.sha256
    assert "changed since it was decoded" in capsys.readouterr().err
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1  # the stale ones went
    assert not left_behind.exists()
    load(root, image_size=16)  # another size: its own cache, beside the first
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2


def test_worker_processes_decode_the_same_bytes(tmp_path, monkeypatch):
    root = two_classes(tmp_path / "p", 6)
    here = load(root, image_size=8)
    monkeypatch.setattr(folder, "IN_PROCESS_BELOW", 0)
    monkeypatch.setattr(folder, "CHUNK_BYTES", 3 * 8 * 8 * 2)  # two images per job
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    pooled = load(root, image_size=8, resize="stretch")  # a new key: decoded by the pool
    monkeypatch.setattr(folder, "IN_PROCESS_BELOW", 10**9)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other-cache"))
    assert torch.equal(pooled.images, load(root, image_size=8, resize="stretch").images)
    assert torch.equal(here.labels, pooled.labels)


def test_a_worker_that_dies_is_an_error_not_a_hang(monkeypatch):
    monkeypatch.setattr(folder, "IN_PROCESS_BELOW", 0)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with folder._pool(10) as pool, pytest.raises(DlcliError, match="worker process died"):
        # os._exit(job): a decoder killed mid-job (a codec crash, the out-of-memory killer)
        list(folder._map(pool, os._exit, [9, 9, 9], "decoding", 3, count=lambda job: 1))


# ---- the config keys ---------------------------------------------------------------------

def test_data_makes_the_dataset_a_folder_and_old_configs_still_read():
    from dlcli.config import config_against_schema, resolve_config

    config = resolve_config("cnn", data=["/x"])
    assert config["dataset"] == "folder" and config["image_size"] is None
    assert config["resize"] == "center-crop" and config["val_fraction"] == 0.1
    with pytest.raises(DlcliError, match="--dataset mnist and --data both"):
        resolve_config("cnn", dataset="mnist", data=["/x"])
    with pytest.raises(DlcliError, match="image_size must be"):
        resolve_config("dcgan", overrides=["image_size=3"])
    with pytest.raises(DlcliError, match="val_fraction must be"):
        resolve_config("vae", overrides=["val_fraction=1"])
    old = {k: v for k, v in resolve_config("cnn").items() if k not in ("data", "image_size")}
    assert config_against_schema("cnn", old)["image_size"] is None
    assert "image_size" not in resolve_config("transformer")


# ---- MNIST written as a folder -----------------------------------------------------------

def test_mnist_as_a_folder_decodes_to_the_idx_tensors_exactly(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from mnist_to_folder import write_folder
    finally:
        sys.path.pop(0)
    from dlcli.data.mnist import load_images

    assert write_folder(tmp_path / "digits", limit=60) == 120
    idx = load_images("mnist")  # the bundled subset: offline in tests
    data = load(tmp_path / "digits")
    assert data.shape == (1, 28, 28) and data.classes == [str(i) for i in range(10)]
    test = set(data.test.tolist())
    for split, x, y, rows in (("train", idx.train_x[:60], idx.train_y[:60],
                               [r for r in range(len(data.images)) if r not in test]),
                              ("test", idx.test_x[:60], idx.test_y[:60], sorted(test))):
        order = sorted(range(60), key=lambda i: (int(y[i]), i))  # the folder's order
        assert torch.equal(data.images[rows], x[order]), split
        assert torch.equal(data.labels[rows], y[order]), split


# ---- CIFAR-10 ----------------------------------------------------------------------------

def cifar_batch(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    records = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1)
    return records.tobytes(), images, labels


def write_cifar(folder: Path, n=3) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for seed, name in enumerate((*cifar.TRAIN, cifar.TEST)):
        blob, x, y = cifar_batch(n, seed)
        (folder / name).write_bytes(blob)
        xs.append(x)
        ys.append(y)
    names = "airplane automobile bird cat deer dog frog horse ship truck".split()
    (folder / cifar.META).write_text("\n".join(names) + "\n\n")
    return np.concatenate(xs), np.concatenate(ys)


def test_cifar10_reads_the_binary_records_from_files_and_from_the_archive(tmp_path):
    x, y = write_cifar(tmp_path / "unpacked" / "cifar10" / cifar.UNPACKED)
    data = load_image_data({"dataset": "cifar10"}, tmp_path / "unpacked")
    assert data.shape == (3, 32, 32) and data.classes[3] == "cat" and len(data.test) == 3
    assert np.array_equal(data.images.numpy(), x) and np.array_equal(data.labels.numpy(), y)
    assert data.mean == (0.4914, 0.4822, 0.4465)
    archive = tmp_path / "packed" / "cifar10" / cifar.ARCHIVE
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "unpacked" / "cifar10" / cifar.UNPACKED, arcname=cifar.UNPACKED)
    packed = load_image_data({"dataset": "cifar10"}, tmp_path / "packed")
    assert torch.equal(packed.images, data.images) and packed.sha256 == data.sha256
    assert not (tmp_path / "packed" / "cifar10" / cifar.UNPACKED).exists()  # nothing unpacked


def test_cifar10_refuses_the_pickled_version_and_broken_batches(tmp_path):
    pickled = tmp_path / "py" / "cifar10" / "cifar-10-batches-py"
    pickled.mkdir(parents=True)
    (pickled / "data_batch_1").write_bytes(b"\x80\x04 not opened")
    with pytest.raises(DlcliError, match="pickled .python version.*never opens"):
        load_image_data({"dataset": "cifar10"}, tmp_path / "py")
    renamed = tmp_path / "renamed" / cifar.ARCHIVE  # the python version under the binary's name
    renamed.parent.mkdir()
    with tarfile.open(renamed, "w:gz") as tar:
        tar.add(pickled, arcname="cifar-10-batches-py")
    with pytest.raises(DlcliError, match="pickled"):
        load_image_data({"dataset": "cifar10"}, tmp_path / "renamed")
    write_cifar(tmp_path / "cut")
    (tmp_path / "cut" / cifar.TEST).write_bytes(b"\x01" * 100)
    with pytest.raises(DlcliError, match="not a whole number of 3,073-byte"):
        load_image_data({"dataset": "cifar10"}, tmp_path / "cut")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DlcliError, match="CIFAR-10 not found"):
        load_image_data({"dataset": "cifar10"}, tmp_path / "nothing")


def test_cifar10_download_is_checked_against_the_published_md5(tmp_path, monkeypatch):
    assert cifar.MD5 == "c32a1d4ab5d03f1284b67883e8d87530" and cifar.SIZE == 170_052_171

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(cifar.urllib.request, "urlopen", lambda url, timeout: Response(b"fake" * 10))
    monkeypatch.setenv("DLCLI_OFFLINE", "0")
    with pytest.raises(DlcliError, match="fails its check.*c32a1d4ab5d03f1284b67883e8d87530"):
        load_image_data({"dataset": "cifar10"})
    assert not list((tmp_path / "cache" / "dlcli" / "cifar10").iterdir())  # nothing kept


# ---- dlcli datasets ----------------------------------------------------------------------

def test_datasets_lists_shapes_classes_and_what_is_here_without_torch(tmp_path):
    write_cifar(tmp_path / "d" / "cifar10")
    code = ("import sys\nfrom dlcli.cli import main\n"
            f"try:\n    main(['datasets', '--json', '--data-dir', {str(tmp_path / 'd')!r}])\n"
            "except SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.stderr.strip().endswith("NO-TORCH"), proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["cifar10"]["shape"] == [3, 32, 32] and rows["cifar10"]["classes"][0] == "airplane"
    assert rows["cifar10"]["found"].endswith("(--data-dir)")
    assert rows["mnist"]["found"].startswith("bundled subset")
    assert rows["fashion-mnist"]["found"] is None and rows["folder"]["kind"] == "image"
    table = run_cli("datasets", check=0).stdout
    assert "3x32x32" in table and "airplane" in table
