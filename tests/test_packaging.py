"""An installed (non-editable) dlcli must carry its presets and bundled data."""

import os
import subprocess
import sys
import zipfile

from conftest import ROOT


def test_wheel_ships_presets_and_bundled_mnist(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("dlcli-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    presets = {p.name for p in (ROOT / "presets").glob("*.yaml")}
    assert presets and {f"dlcli/presets/{p}" for p in presets} <= names
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "dlcli").rglob("*.py")}
    assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"
    assert "dlcli/data/bundled/mnist-subset-train-images-idx3-ubyte.gz" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "runs/")) for n in names)

    # Installed from the wheel, away from this checkout, dlcli finds every preset.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    listing = subprocess.run(
        [sys.executable, "-c", "from dlcli.config import PRESET_DIR, list_presets;"
         "print(PRESET_DIR); print(*(p['name'] for p in list_presets()))"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr[-2000:]
    found_dir, found = listing.stdout.splitlines()
    assert found_dir == str(site / "dlcli" / "presets")
    assert set(found.split()) == {p.removesuffix(".yaml") for p in presets}
