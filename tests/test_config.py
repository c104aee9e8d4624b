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
    (["epochs=0"], "positive"),
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
