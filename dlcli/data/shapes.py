"""`shapes`: a factor dataset dlcli draws itself, on the dSprites grid.

dSprites (Matthey et al., 2017, https://github.com/deepmind/dsprites-dataset) is the
standard data for measuring disentanglement (Higgins et al., 2017; Kim & Mnih, 2018; Chen
et al., 2018; Locatello et al., 2019): 64x64 single-channel sprites, every combination of
five independent factors of variation, each image labelled with its factor values:

    shape        3   square, ellipse, heart
    scale        6   0.5 .. 1 in equal steps
    orientation 40   0 .. 2pi (exclusive) in equal steps
    x           32   the centre, left to right
    y           32   the centre, top to bottom

3 * 6 * 40 * 32 * 32 = 737,280 images. Row r of the dataset is the combination whose
index in that order (y fastest) is r, as in dSprites' own file; the class label of an
image is its shape, so a `cnn` can learn to tell the shapes apart.

How it differs from dSprites: the sprites are drawn here, not downloaded, and anti-aliased
(each pixel is the fraction of 4x4 sub-pixel samples inside the shape, in 0..255) where
dSprites is binary; the orientations stop short of 2pi (dSprites' 40th equals its first);
the shapes are drawn from their equations (a square, a 2:1 ellipse, the heart curve
(x^2 + y^2 - 1)^3 = x^2 y^3), so they look like dSprites' but are not its pixels. As in
dSprites, a square looks the same every quarter turn and an ellipse every half turn.

Cheap by construction: an image is one of 720 sprites (shape x scale x orientation)
moved to its position, so only a small bank of sprites is drawn (well under a second, a
few MB) and any batch of images is pasted from it when indexed (ShapeImages). The 3 GB
the whole set would take are never held. Positions step by 1.5 pixels at 64 px (0.75 at
32), so each sprite is drawn at every sub-pixel phase a centre can have (2 per axis at
64 px, 4 at 32).

Keys for quick runs (`--set`): `shapes_grid: small` keeps every 2nd scale, every 4th
orientation and every 2nd position (3 x 3 x 10 x 16 x 16 = 23,040 images), and
`image_size: 32` draws everything at half the size. Test split: a held-out 10,000 images
(a tenth of a smaller grid) chosen by a permutation with a fixed seed, the same in every
run; training holds out its validation images from the rest as for any dataset.
"""

from __future__ import annotations

import math

import torch

from dlcli.data.catalog import SHAPES_GRIDS, SHAPES_IMAGE_SIZES, check_shapes_keys, get_dataset

SHAPES = ("square", "ellipse", "heart")
FACTOR_NAMES = ("shape", "scale", "orientation", "x", "y")
FULL_SIZES = (3, 6, 40, 32, 32)
# Which values of each factor a grid keeps: every `stride`-th value of the full grid.
GRIDS = {"full": (1, 1, 1, 1, 1), "small": (1, 2, 4, 2, 2)}
assert tuple(GRIDS) == SHAPES_GRIDS and SHAPES_IMAGE_SIZES == (64, 32)
assert get_dataset("shapes").factors == FACTOR_NAMES
SUPERSAMPLE = 4  # sub-pixel samples per pixel side: the anti-aliasing
TEST_IMAGES = 10_000
SPLIT_SEED = 13  # the test hold-out's permutation: fixed, whatever the run's seed

# The geometry, in pixels of a 64-px image (scaled with image_size). Centres are
# 32 + (i - 15.5) * 1.5 (8.75 .. 55.25); a shape at scale 1 fits a circle of radius 8.5
# around its centre, so even the largest, rotated, stays inside the image at every position.
POSITION_STEP = 1.5
RADIUS = 8.5


def factor_values(grid: str = "full") -> dict[str, torch.Tensor]:
    """The value of each factor at each of its indices: shape names' indices, scale in
    [0.5, 1], orientation in radians, x and y in [0, 1] (the centre's place along its axis)."""
    strides = GRIDS[grid]
    full = {"shape": torch.arange(3.0), "scale": torch.linspace(0.5, 1, 6),
            "orientation": torch.arange(40) * (2 * math.pi / 40),
            "x": torch.linspace(0, 1, 32), "y": torch.linspace(0, 1, 32)}
    return {name: full[name][::s] for name, s in zip(FACTOR_NAMES, strides)}


def grid_sizes(grid: str = "full") -> tuple[int, ...]:
    return tuple(len(range(0, n, s)) for n, s in zip(FULL_SIZES, GRIDS[grid]))


def inside(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether points (u, v) of the shape's own frame (radius 1, v upward) are inside it."""
    if shape == 0:  # a square inscribed in the unit circle
        return (u.abs() <= 1 / math.sqrt(2)) & (v.abs() <= 1 / math.sqrt(2))
    if shape == 1:  # an ellipse, twice as long as it is wide
        return u.square() + (2 * v).square() <= 1
    # the heart curve (x^2 + y^2 - 1)^3 <= x^2 y^3 spans y in [-1, 1.25]: centred on
    # y = 0.125, it reaches 1.33 from there at most (measured), so it is shrunk by 1.34
    x, y = u * 1.34, v * 1.34 + 0.125
    return (x.square() + y.square() - 1) ** 3 <= x.square() * y ** 3


def draw_sprites(size: int, phases: torch.Tensor, patch: int, grid: str) -> torch.Tensor:
    """Every (shape, scale, orientation) of the grid, at every sub-pixel phase of its centre
    along each axis: uint8 (shapes, scales, orientations, phases_y, phases_x, patch, patch).
    In a patch the shape's centre is at (patch // 2 + phase) pixels from the top and left."""
    values = factor_values(grid)
    unit = size / 64  # pixels of this image size per pixel of a 64-px image
    n = patch * SUPERSAMPLE
    sub = (torch.arange(n, dtype=torch.float64) + 0.5) / SUPERSAMPLE  # sample points, pixels
    out = torch.zeros(len(values["shape"]), len(values["scale"]), len(values["orientation"]),
                      len(phases), len(phases), patch, patch, dtype=torch.uint8)
    angles = values["orientation"].double()
    cos, sin = angles.cos().view(-1, 1, 1), angles.sin().view(-1, 1, 1)
    for py, phase_y in enumerate(phases.tolist()):
        for px, phase_x in enumerate(phases.tolist()):
            dy = (sub - patch // 2 - phase_y).view(1, n, 1)  # downward from the centre
            dx = (sub - patch // 2 - phase_x).view(1, 1, n)
            for k, scale in enumerate(values["scale"].tolist()):
                radius = RADIUS * unit * scale
                # into the shape's frame: turn back by the orientation (counter-clockwise
                # on screen, so y is flipped to point up), then divide by the radius
                up = -dy
                u = (dx * cos + up * sin) / radius
                v = (-dx * sin + up * cos) / radius
                for s, shape in enumerate(values["shape"].long().tolist()):
                    hit = inside(shape, u, v).float()
                    cover = hit.view(-1, patch, SUPERSAMPLE, patch, SUPERSAMPLE).mean((2, 4))
                    out[s, k, :, py, px] = (cover * 255).round().to(torch.uint8)
    return out


class ShapeImages:
    """The images of a `shapes` grid, pasted from its sprite bank when indexed.

    Stands where a uint8 (N, 1, H, W) tensor of every image would: `images[rows]` (a tensor
    of row indices, on any device) gives those images as uint8 on the bank's device; `len`,
    `shape`, `dtype`, `device`, `nbytes` (of the bank: what moving it costs) and `to(device)`
    behave as a tensor's."""

    dtype = torch.uint8

    def __init__(self, bank: torch.Tensor, sizes: tuple[int, ...], size: int,
                 corners: torch.Tensor, phase_of: torch.Tensor):
        self.bank = bank  # draw_sprites' output
        self.sizes = sizes  # values per factor in this grid
        self.size = size  # pixels per side
        self.corners = corners  # (positions,) pixel of each position's patch's first row/column
        self.phase_of = phase_of  # (positions,) the sub-pixel phase of each position
        self.patch = bank.shape[-1]
        self.shape = (math.prod(sizes), 1, size, size)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def device(self) -> torch.device:
        return self.bank.device

    @property
    def nbytes(self) -> int:
        return self.bank.nbytes + self.corners.nbytes + self.phase_of.nbytes

    def to(self, device, non_blocking: bool = False) -> ShapeImages:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return ShapeImages(move(self.bank), self.sizes, self.size, move(self.corners),
                           move(self.phase_of))

    def factors(self, rows: torch.Tensor) -> torch.Tensor:
        """The factor indices (len(rows), 5) of rows: the row number in mixed radix."""
        out = []
        for n in reversed(self.sizes):
            out.append(rows % n)
            rows = rows // n
        return torch.stack(out[::-1], 1)

    def __getitem__(self, rows) -> torch.Tensor:
        if isinstance(rows, slice):
            rows = torch.arange(len(self))[rows]
        rows = torch.as_tensor(rows, device=self.device).long().view(-1)
        f = self.factors(rows)
        shape, scale, turn, x, y = f.unbind(1)
        sprites = self.bank[shape, scale, turn, self.phase_of[y], self.phase_of[x]]
        # paste each sprite onto a canvas padded by a patch on every side (its empty margin
        # may reach past the image), then cut the image out of it
        p, side = self.patch, self.size + 2 * self.patch
        top, left = self.corners[y] + p, self.corners[x] + p
        offsets = torch.arange(p, device=self.device)
        flat = ((top.view(-1, 1, 1) + offsets.view(1, p, 1)) * side
                + left.view(-1, 1, 1) + offsets.view(1, 1, p)).view(len(rows), -1)
        canvas = torch.zeros(len(rows), side * side, dtype=torch.uint8, device=self.device)
        canvas.scatter_(1, flat, sprites.reshape(len(rows), -1))
        canvas = canvas.view(len(rows), side, side)
        return canvas[:, p:p + self.size, p:p + self.size].unsqueeze(1)


def shape_images(grid: str = "full", size: int = 64) -> ShapeImages:
    """The lazy images of a grid at a size: its sprite bank drawn, positions laid out."""
    unit = size / 64
    # the centres the grid keeps, in pixels from the image's top (or left) edge
    full = size / 2 + (torch.arange(32, dtype=torch.float64) - 15.5) * POSITION_STEP * unit
    centres = full[::GRIDS[grid][3]]
    whole = centres.floor()
    phases, phase_of = torch.unique((centres - whole).round(decimals=6), return_inverse=True)
    patch = 2 * math.ceil(RADIUS * unit + 1) + 1  # the largest shape, any phase, with a margin
    bank = draw_sprites(size, phases, patch, grid)
    corners = whole.long() - patch // 2
    return ShapeImages(bank, grid_sizes(grid), size, corners, phase_of)


def pixel_statistics(images: ShapeImages) -> tuple[float, float]:
    """The mean and std of every pixel of every image, in [0, 1], exactly and cheaply: an
    image holds one sprite whole, so a sum over the set is a sum over the sprite bank, each
    sprite counted once per position whose centre has its phase."""
    bank = images.bank.double().div(255)
    per_phase = images.phase_of.bincount(minlength=bank.shape[3]).double()
    shown = (per_phase.view(-1, 1) * per_phase.view(1, -1)).view(1, 1, 1, *bank.shape[3:5])
    pixels = len(images) * images.size ** 2
    mean = float((bank.sum((-1, -2)) * shown).sum() / pixels)
    square = float((bank.square().sum((-1, -2)) * shown).sum() / pixels)
    return mean, math.sqrt(max(square - mean * mean, 0.0))


def load_shapes(config: dict):
    """The `shapes` ImageData of a config's grid and image size."""
    from dlcli.data.images import ImageData
    from dlcli.tasks.base import sha256_of

    grid, size = check_shapes_keys(config)
    images = shape_images(grid, size)
    n = len(images)
    factors = images.factors(torch.arange(n))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    held = min(TEST_IMAGES, n // 10)
    test, train = order[:held].sort().values, order[held:].sort().values
    mean, std = pixel_statistics(images)
    # the pixels are a function of the drawing code: hash what they are drawn from
    digest = sha256_of("shapes", grid, str(size), images.bank, images.corners, images.phase_of)
    return ImageData("shapes", (1, size, size), list(SHAPES), images, factors[:, 0].clone(),
                     train, test, f"generated ({grid} grid, {size} px)", (mean,), (std,), digest,
                     factors=factors, factor_names=list(FACTOR_NAMES),
                     factor_sizes=list(images.sizes))
