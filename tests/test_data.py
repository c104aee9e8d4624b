import gzip
import struct

import pytest
import torch

from dlcli.data import mnist
from dlcli.errors import DlcliError


def idx_bytes(array: torch.Tensor) -> bytes:
    head = bytes([0, 0, 0x08, array.dim()]) + struct.pack(f">{array.dim()}I", *array.shape)
    return head + array.to(torch.uint8).numpy().tobytes()


def write_fake_mnist(folder, n_train=20, n_test=10, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "train-images-idx3-ubyte": torch.randint(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": torch.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": torch.randint(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": torch.arange(n_test) % 10,
    }
    for stem, t in data.items():
        raw = idx_bytes(t)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    return data


def test_parse_idx_round_trip_and_truncation():
    t = torch.randint(0, 256, (3, 28, 28))
    assert torch.equal(mnist.parse_idx(idx_bytes(t), "x"), t.to(torch.uint8))
    with pytest.raises(DlcliError, match="truncated"):
        mnist.parse_idx(idx_bytes(t)[:-5], "x")
    with pytest.raises(DlcliError, match="not an IDX"):
        mnist.parse_idx(b"hello world", "x")


def test_checksum_is_enforced_for_mnist(tmp_path):
    write_fake_mnist(tmp_path / "mnist")
    with pytest.raises(DlcliError, match="SHA-256"):
        mnist.load_images("mnist", tmp_path, allow_download=False)


def test_lookup_order_data_dir_then_env_then_cache(tmp_path, monkeypatch):
    # fashion-mnist has no SHA table, so fake files load; sizes tell the folders apart
    write_fake_mnist(tmp_path / "a" / "fashion-mnist", n_train=20, gz=False)
    write_fake_mnist(tmp_path / "b" / "fashion-mnist", n_train=30)
    write_fake_mnist(tmp_path / "cache" / "dlcli" / "fashion-mnist", n_train=40)
    monkeypatch.setenv("DLCLI_DATA_DIR", str(tmp_path / "b"))
    assert len(mnist.load_images("fashion-mnist", tmp_path / "a").train_x) == 20
    assert len(mnist.load_images("fashion-mnist").train_x) == 30
    monkeypatch.delenv("DLCLI_DATA_DIR")
    images = mnist.load_images("fashion-mnist", allow_download=False)
    assert len(images.train_x) == 40 and images.train_x.shape[1:] == (1, 28, 28)
    assert images.classes[0] == "T-shirt"


def test_bundled_subset_is_the_offline_fallback(capsys):
    images = mnist.load_images("mnist", allow_download=False)
    assert images.source == "bundled subset"
    assert images.train_x.shape == (10000, 1, 28, 28) and images.test_x.shape == (2000, 1, 28, 28)
    assert set(images.train_y.tolist()) == set(range(10))
    assert "bundled MNIST subset" in capsys.readouterr().err
    with pytest.raises(DlcliError, match="not found"):
        mnist.load_images("fashion-mnist", allow_download=False)


def test_real_mnist_verifies(mnist_dir):
    images = mnist.load_images("mnist", mnist_dir, allow_download=False)
    assert images.train_x.shape == (60000, 1, 28, 28)
    counts = torch.bincount(images.train_y).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert abs(images.train_x.float().div(255).mean().item() - 0.1307) < 1e-3


def test_an_explicit_data_dir_without_the_files_says_so(tmp_path, capsys):
    """The lookup goes on to the cache and the bundled subset (DESIGN.md), but a folder
    named with --data-dir that was passed over is named, with the files it lacks."""
    folder = tmp_path / "d" / "mnist"
    folder.mkdir(parents=True)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"")
    images = mnist.load_images("mnist", tmp_path / "d", allow_download=False)
    err = capsys.readouterr().err
    assert images.source == "bundled subset"
    assert f"no complete mnist in {folder}" in err and "t10k-images-idx3-ubyte" in err
    assert "missing train-images" not in err


def test_the_data_dir_notice_comes_even_when_a_later_place_has_the_data(
        tmp_path, capsys, monkeypatch, mnist_dir):
    monkeypatch.setenv("DLCLI_DATA_DIR", str(mnist_dir))
    (tmp_path / "empty").mkdir()
    images = mnist.load_images("mnist", tmp_path / "empty", allow_download=False)
    assert "$DLCLI_DATA_DIR" in images.source
    assert "no complete mnist" in capsys.readouterr().err
