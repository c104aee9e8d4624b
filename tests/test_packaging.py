"""An installed (non-editable) dlcli must carry its presets and bundled data."""

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
    presets = {p.name for p in (ROOT / "dlcli" / "presets").glob("*.yaml")}
    assert presets and {f"dlcli/presets/{p}" for p in presets} <= names
    assert "dlcli/data/bundled/mnist-subset-train-images-idx3-ubyte.gz" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "runs/")) for n in names)
