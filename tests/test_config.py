import re

import pytest

from dlcli.config import list_presets, parse_override, resolve_config
from dlcli.errors import DlcliError


def test_overrides_are_typed():
    assert parse_override("lr=1e-3") == ("lr", 1e-3)
    assert parse_override("hidden=[64, 32]") == ("hidden", [64, 32])
    assert parse_override("batchnorm=false") == ("batchnorm", False)
    config = resolve_config("mlp", None, ["hidden=[64]", "lr=1", "batchnorm=false"], epochs=2)
    assert config["hidden"] == [64] and config["lr"] == 1.0 and isinstance(config["lr"], float)
    assert config["batchnorm"] is False and config["epochs"] == 2


def test_precedence_preset_then_set_then_flags(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("model: mlp\nepochs: 7\nlr: 0.3\n")
    config = resolve_config("mlp", str(preset), ["lr=0.2"], epochs=None, lr=None)
    assert config["epochs"] == 7 and config["lr"] == 0.2
    assert resolve_config("mlp", str(preset), ["lr=0.2"], lr=0.1)["lr"] == 0.1


@pytest.mark.parametrize("overrides, message", [
    (["nope=1"], "unknown key 'nope'"),
    (["epochs=1.5"], "expected int"),
    (["batchnorm=3"], "expected bool"),
    (["hidden=64"], "expected list"),
    (["epochs=0"], "at least 1"),
    (["novalue"], "key=value"),
])
def test_bad_overrides(overrides, message):
    with pytest.raises(DlcliError, match=message):
        resolve_config("mlp", None, overrides)


def test_every_bundled_preset_resolves():
    for preset in list_presets():
        assert preset["model"], preset
        config = resolve_config(preset["model"], preset["name"])
        assert config["model"] == preset["model"]


@pytest.mark.parametrize("model, override, message", [
    ("mlp", "hidden=[-5]", "hidden must be at least 1, got [-5]"),
    ("mlp", "hidden=[2.5]", "'hidden[0]': 2.5 is float, expected int"),
    ("mlp", "dropout=1.5", "dropout must be in [0, 1)"),
    ("mlp", "lr=.nan", "lr must be more than 0"),
    ("mlp", "precision=bogus", "unknown precision 'bogus'"),
    ("mlp", "seed=99999999999999999999", "seed must be 64 bits"),
    ("gan", "latent_dim=-1", "latent_dim must be at least 1"),
    ("gan", "ema=2", "ema must be in [0, 1)"),
    ("transformer", "heads=3", "d_model (128) must be a multiple of heads (3)"),
    ("transformer", "max_len=0", "max_len must be at least 2"),
    ("vae", "val_size=-3", "val_size must be 0 or more"),
    ("vae", "free_bits=-0.5", "free_bits must be 0 or more"),
    ("vae", "kl_warmup=-1", "kl_warmup must be 0 or more"),
    ("vae", "iwae_samples=0", "iwae_samples must be at least 1"),
])
def test_values_a_model_cannot_use_are_refused_by_name(model, override, message):
    """Each of these used to fail deep inside torch (exit 1, "unexpected failure") or to
    train nothing; now it is one line naming the key."""
    with pytest.raises(DlcliError, match=re.escape(message)):
        resolve_config(model, None, [override])
