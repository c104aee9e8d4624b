"""The `shapes` factor dataset: its grid, its split, its pixels (each factor moves them as
it should), its cost, and the keys that shrink it."""

from __future__ import annotations

import time

import pytest
import torch

from dlcli.config import resolve_config
from dlcli.data.images import load_image_data
from dlcli.data.shapes import SHAPES, load_shapes, pixel_statistics, shape_images
from dlcli.errors import DlcliError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def full():
    return load_shapes({"dataset": "shapes"})


def row(s, k, t, x, y, sizes=(3, 6, 40, 32, 32)):
    """The row of a factor combination: its index in mixed radix, y fastest (dSprites' order)."""
    index = 0
    for value, size in zip((s, k, t, x, y), sizes):
        index = index * size + value
    return index


def pixels(data, *factors) -> torch.Tensor:
    return data.images[torch.tensor([row(*factors, sizes=data.factor_sizes)])][0, 0].double()


def centroid(image: torch.Tensor) -> tuple[float, float]:
    """(x, y) of an image's centre of mass, in pixels."""
    ys, xs = torch.meshgrid(torch.arange(image.shape[0]).double(),
                            torch.arange(image.shape[1]).double(), indexing="ij")
    mass = image.sum()
    return float((image * xs).sum() / mass), float((image * ys).sum() / mass)


def test_the_dsprites_grid_and_its_factors(full):
    assert len(full.images) == 737_280 == 3 * 6 * 40 * 32 * 32
    assert full.factor_names == ["shape", "scale", "orientation", "x", "y"]
    assert full.factor_sizes == [3, 6, 40, 32, 32]
    assert full.shape == (1, 64, 64) and full.classes == list(SHAPES)
    assert full.factors.shape == (737_280, 5)
    assert full.factors[row(2, 3, 17, 5, 30)].tolist() == [2, 3, 17, 5, 30]
    assert full.factors[-1].tolist() == [2, 5, 39, 31, 31]
    assert torch.equal(full.labels, full.factors[:, 0])  # the class is the shape
    for k, size in enumerate(full.factor_sizes):  # every value of every factor appears
        assert torch.equal(full.factors[:, k].bincount(), torch.full((size,), 737_280 // size))


def test_a_fixed_test_hold_out_of_ten_thousand(full):
    assert len(full.test) == 10_000 and len(full.train) == 737_280 - 10_000
    assert torch.equal(torch.cat([full.train, full.test]).sort().values, torch.arange(737_280))
    again = load_shapes({"dataset": "shapes", "seed": 7})
    assert torch.equal(again.test, full.test)
    assert again.sha256 == full.sha256  # a digest of the drawing, not 3 GB of pixels


def test_drawn_the_same_every_time(full):
    rows = torch.randint(0, 737_280, (200,), generator=torch.Generator().manual_seed(0))
    again = shape_images("full", 64)
    assert torch.equal(full.images[rows], again[rows])
    batch = full.images[rows]
    assert batch.dtype == torch.uint8 and batch.shape == (200, 1, 64, 64)
    assert 0 < batch.float().mean() < 40 and batch.max() == 255  # a shape on black
    assert len(batch.unique()) > 2  # anti-aliased edges


def test_x_moves_right_and_y_moves_down_by_the_position_step(full):
    x0, y0 = centroid(pixels(full, 2, 5, 0, 0, 10))
    x1, y1 = centroid(pixels(full, 2, 5, 0, 31, 10))
    assert x1 - x0 == pytest.approx(31 * 1.5, abs=0.05) and y1 == pytest.approx(y0, abs=0.05)
    x2, y2 = centroid(pixels(full, 2, 5, 0, 0, 11))
    assert y2 - y0 == pytest.approx(1.5, abs=0.05) and x2 == pytest.approx(x0, abs=0.05)


def test_scale_grows_the_area_and_shapes_differ(full):
    for shape in range(3):
        areas = [float(pixels(full, shape, k, 7, 16, 16).sum()) for k in range(6)]
        assert all(a < b for a, b in zip(areas, areas[1:]))
        assert areas[-1] / areas[0] == pytest.approx(4, rel=0.1)  # twice the size, 4x the area
    square, ellipse, heart = (pixels(full, s, 5, 3, 16, 16) for s in range(3))
    for a, b in ((square, ellipse), (square, heart), (ellipse, heart)):
        assert (a - b).abs().sum() > 0.2 * a.sum()


def test_orientation_turns_the_shape_with_its_symmetries(full):
    upright, upside_down = pixels(full, 2, 5, 0, 15, 15), pixels(full, 2, 5, 20, 16, 16)
    assert (upright - upside_down).abs().sum() > 0.3 * upright.sum()
    # a half turn about the centre: centres 31.25 (position 15) and 32.75 (16) mirror
    # each other about the middle of the image
    assert (upright - upside_down.flip((0, 1))).abs().sum() < 0.01 * upright.sum()
    # the heart's lobes hold more ink than its point: upright, its mass is above its centre
    # (pixel i spans i .. i + 1, so its centre is at i + 0.5)
    assert centroid(upright)[1] + 0.5 < 31.25 - 1 and centroid(upside_down)[1] + 0.5 > 32.75 + 1
    square = [pixels(full, 0, 5, t, 16, 16) for t in (0, 5, 10)]
    assert (square[0] - square[1]).abs().sum() > 0.2 * square[0].sum()  # 45 degrees: a diamond
    assert (square[0] - square[2]).abs().sum() < 0.02 * square[0].sum()  # a quarter turn: same


def test_the_largest_shapes_stay_inside_at_every_corner(full):
    images = full.images
    for shape in range(3):
        for x, y in ((0, 0), (0, 31), (31, 0), (31, 31)):
            for turn in (0, 5, 13):
                image = pixels(full, shape, 5, turn, x, y)
                sprite = images.bank[shape, 5, turn, images.phase_of[y], images.phase_of[x]]
                assert image.sum() == sprite.double().sum()  # nothing cut off


def test_pixel_statistics_are_exact():
    data = load_shapes({"dataset": "shapes", "shapes_grid": "small", "image_size": 32})
    every = data.images[torch.arange(len(data.images))].double().div(255)
    assert data.mean[0] == pytest.approx(float(every.mean()), rel=1e-9)
    assert data.std[0] == pytest.approx(float(every.std(unbiased=False)), rel=1e-6)


def test_the_small_grid_and_half_size():
    data = load_image_data({"dataset": "shapes", "shapes_grid": "small", "image_size": 32})
    assert data.factor_sizes == [3, 3, 10, 16, 16] and len(data.images) == 23_040
    assert data.images[torch.arange(5)].shape == (5, 1, 32, 32)
    assert len(data.test) == 2_304  # a tenth of a grid under 100,000 images
    assert data.sha256 != load_shapes({"dataset": "shapes"}).sha256


def test_cheap_to_draw_and_to_read():
    start = time.perf_counter()
    images = shape_images("full", 64)
    drawn = time.perf_counter() - start
    assert drawn < 5 and images.nbytes < 10 * 2**20  # seconds and MB, not minutes and GB
    start = time.perf_counter()
    for first in range(0, 20_480, 256):
        images[torch.arange(first, first + 256)]
    assert time.perf_counter() - start < 5  # 20,480 images: about 0.2 s on one thread
    mean, std = pixel_statistics(images)
    assert 0.01 < mean < 0.05 and 0.1 < std < 0.2


@pytest.mark.parametrize("sets, words", [
    (["shapes_grid=tiny"], "unknown shapes_grid 'tiny'; choose one of: full, small"),
    (["image_size=48"], "shapes are drawn at image_size 64 or 32"),
])
def test_bad_keys_are_one_line_errors(sets, words):
    with pytest.raises(DlcliError, match=words):
        resolve_config("vae", None, ["dataset=shapes", *sets])


def test_other_datasets_ignore_the_shapes_keys():
    config = resolve_config("vae", None, ["image_size=48"])  # mnist: not a shapes size rule
    assert config["shapes_grid"] == "full"
