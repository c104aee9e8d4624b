"""samples/: the pictures a model makes at the end of each epoch, as PNG files named
TAG-NNN.png (epoch-003.png: samples after epoch 3; recon-003.png: reconstructions)."""

from __future__ import annotations

from dlcli.reporters import Reporter, Run


class SamplePictures(Reporter):
    def start(self, run: Run) -> None:
        self.folder = run.dir / "samples"
        self.folder.mkdir(parents=True, exist_ok=True)

    def images(self, epoch: int, tag: str, images, nrow: int, captions=None) -> None:
        from dlcli.images import save_grid

        save_grid(images, self.folder / f"{tag}-{epoch:03d}.png", nrow=nrow, captions=captions)
