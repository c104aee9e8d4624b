import json
import stat
from pathlib import Path

import pytest
import torch
from torch import nn

from dlcli.checkpoint import flatten_state, load_checkpoint, save_checkpoint, unflatten_state
from dlcli.errors import DlcliError
from dlcli.fileio import atomic_write
from dlcli.inspect import describe


def test_round_trip_with_training_state(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(8, 3)).sum().backward()
    opt.step()
    rng = torch.get_rng_state()
    path = save_checkpoint(tmp_path / "a.safetensors", model="mlp", config={"lr": 0.01},
                           modules={"model": model}, epoch=2, step=10, metrics={"acc": 0.5},
                           state={"opt": opt.state_dict(), "rng": rng})
    ckpt = load_checkpoint(path, expect_model="mlp")
    assert (ckpt.model, ckpt.epoch, ckpt.step, ckpt.metrics) == ("mlp", 2, 10, {"acc": 0.5})
    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ckpt.load_into({"model": other})
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    opt2 = torch.optim.Adam(other.parameters(), lr=0.5)
    opt2.load_state_dict(ckpt.state["opt"])
    assert opt2.param_groups[0]["lr"] == 0.01
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(ckpt.state["rng"], rng)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_flatten_keeps_int_keys_and_nesting():
    tensors = {}
    obj = {"state": {0: {"m": torch.ones(2)}, 1: {"step": 3}}, "groups": [{"lr": 0.1, "params": [0, 1]}]}
    skeleton = json.loads(json.dumps(flatten_state(obj, "s", tensors)))
    back = unflatten_state(skeleton, tensors)
    assert back["state"][1] == {"step": 3} and torch.equal(back["state"][0]["m"], torch.ones(2))
    assert back["groups"] == [{"lr": 0.1, "params": [0, 1]}]


def test_tied_weights_are_saved(tmp_path):
    emb = nn.Embedding(5, 3)
    head = nn.Linear(3, 5, bias=False)
    head.weight = emb.weight
    module = nn.ModuleDict({"emb": emb, "head": head})
    path = save_checkpoint(tmp_path / "t.safetensors", model="transformer", config={},
                           modules={"model": module})
    fresh = nn.ModuleDict({"emb": nn.Embedding(5, 3), "head": nn.Linear(3, 5, bias=False)})
    fresh["head"].weight = fresh["emb"].weight
    load_checkpoint(path).load_into({"model": fresh})
    assert torch.equal(fresh["head"].weight, emb.weight)


def test_bad_files(tmp_path):
    model = nn.Linear(2, 2)
    path = save_checkpoint(tmp_path / "a.safetensors", model="mlp", config={}, modules={"m": model})
    with pytest.raises(DlcliError, match="not gan"):
        load_checkpoint(path, expect_model="gan")
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DlcliError):
        load_checkpoint(truncated)
    with pytest.raises(DlcliError, match="truncated"):
        describe(truncated)
    with pytest.raises(DlcliError, match="not found"):
        load_checkpoint(tmp_path / "none.safetensors")
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(DlcliError, match="not a dlcli checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(DlcliError, match="do not fit"):
        load_checkpoint(path).load_into({"m": nn.Linear(3, 2)})
    # a damaged header: metadata that is not what dlcli writes
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    for key, bad in (("config", "{not json"), ("config", "[1, 2]"), ("state", "nope"),
                     ("epoch", "two")):
        damaged = tmp_path / f"damaged-{key}.safetensors"
        save_file({"model/m/weight": torch.zeros(2, 2)}, str(damaged), metadata={**meta, key: bad})
        for read in (load_checkpoint, describe):
            with pytest.raises(DlcliError, match=f"its '{key}' metadata"):
                read(damaged)


def test_no_unsafe_loading_in_package():
    from pathlib import Path

    import dlcli

    for path in Path(dlcli.__file__).parent.rglob("*.py"):
        text = path.read_text()
        for banned in ("torch.load(", "import pickle", "pickle.", "yaml.load(", " eval("):
            assert banned not in text, (path, banned)


def test_written_files_follow_the_umask(tmp_path, monkeypatch):
    """mkstemp's private 0600 must not survive the rename: others on a shared machine
    should read a checkpoint as they read any file its owner writes."""
    from dlcli import fileio

    for umask, mode in ((0o022, 0o644), (0o027, 0o640)):
        monkeypatch.setattr(fileio, "UMASK", umask)
        atomic_write(tmp_path / "a.txt", lambda tmp: Path(tmp).write_text("x"))
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == mode


def test_huge_seeds_shuffle_like_torch_wraps_them():
    from dlcli.data.batches import epoch_permutation

    assert len(epoch_permutation(10, 2**62, 3)) == 10  # seed * 1_000_003 overflowed int64
    assert torch.equal(epoch_permutation(10, 5, 1), epoch_permutation(10, 5, 1))
