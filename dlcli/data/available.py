"""Whether a dataset's files are on this machine, and where: for `dlcli datasets`.

Torch-free: it only looks for files, in the places the loaders look (--data-dir,
$DLCLI_DATA_DIR, the cache), and reads none of them.
"""

from __future__ import annotations

from pathlib import Path

from dlcli.data.catalog import get_dataset
from dlcli.data.files import IDX_FILES, candidate_dirs

BUNDLED_MNIST = "bundled subset (10,000 training, 2,000 test images)"


def _idx_folder(name: str, data_dir) -> str:
    for label, folder in candidate_dirs(name, data_dir):
        if all((folder / stem).is_file() or (folder / f"{stem}.gz").is_file()
               for stem in IDX_FILES.values()):
            return f"{folder} ({label})"
    return ""


def found_here(name: str, data_dir=None) -> str:
    """Where the dataset's files are ("" when they are not here), or how it is made."""
    kind = get_dataset(name).kind
    if kind == "toy":
        return "built in"
    if name in ("numbers", "shapes"):
        return "generated"
    if name == "folder":
        return "your --data DIR"
    if name in ("mnist", "fashion-mnist"):
        return _idx_folder(name, data_dir) or (BUNDLED_MNIST if name == "mnist" else "")
    if name == "cifar10":
        from dlcli.data.cifar import locate

        for label, folder in candidate_dirs(name, data_dir):
            found = locate(folder)
            if found and found[0] == "pickled":
                return f"only the pickled version, which is refused: {found[1]}"
            if found:
                return f"{found[1]} ({label})"
        return ""
    if name == "multi30k":
        from dlcli.data.text import MULTI30K_LANGS, _multi30k_folder

        for label, folder in candidate_dirs(name, data_dir):
            if _multi30k_folder(Path(folder), MULTI30K_LANGS[:2]):
                return f"{folder} ({label})"
        return ""
    return ""
