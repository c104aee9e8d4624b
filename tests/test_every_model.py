"""Every registered model, driven by the registry: build it for data of several image
shapes, train one step, save, load, and sample or classify with what was loaded. Also what
the data's shape and classes mean to the models: labels by name, the judge's data,
checkpoints from before the data was described, and sizes a network cannot take."""

from __future__ import annotations

import json

import pytest
import torch

from dlcli.checkpoint import load_checkpoint, save_checkpoint
from dlcli.config import resolve_config
from dlcli.errors import DlcliError
from dlcli.registry import get_spec, list_models

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = [(1, 28, 28), (3, 32, 32), (1, 64, 64)]
CLASSES = ["cat", "ankle boot", "Zebra"]  # names with a space and a capital
# Each model as small as it goes: the test is about plumbing, not learning.
TINY = {
    "perceptron": [],
    "mlp": ["hidden=[8]"],
    "cnn": ["channels=[2, 4]", "width=8"],
    "gan": ["g_hidden=[8, 8]", "d_hidden=[8]", "latent_dim=4", "ema=0.9", "clusters=3"],
    "cgan": ["g_hidden=[8, 8]", "d_hidden=[8]", "latent_dim=4"],
    "dcgan": ["width=2", "latent_dim=4", "pack=1", "clusters=3"],
    "vae": ["hidden=[8]", "latent=2"],
    "cvae": ["hidden=[8]", "latent=2"],
    "beta-vae": ["hidden=[8]", "latent=2"],
    "beta-tcvae": ["hidden=[8]", "latent=2"],
}
VARIANTS = {"vae-conv": ("vae", ["arch=conv", "channels=2", "hidden=[8]", "latent=2"]),
            "cvae-conv": ("cvae", ["arch=conv", "channels=2", "hidden=[]", "latent=2"])}
IMAGE_MODELS = [s.name for s in list_models() if "image" in s.data]


def fake_data(shape, classes=CLASSES, n=24, seed=0):
    """Random uint8 images of `shape` in memory, as the data layer hands them over."""
    from dlcli.data.images import ImageData

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % max(len(classes), 1)
    channels = shape[0]
    return ImageData("made-up", tuple(shape), list(classes), images, labels,
                     torch.arange(n - 8), torch.arange(n - 8, n), "made in the test",
                     (0.5,) * channels, (0.29,) * channels, "0" * 64)


@pytest.fixture
def data_of(monkeypatch):
    """Make load_image_data hand over made-up data of a shape (and classes)."""
    import dlcli.data.images as images

    def use(shape, classes=CLASSES):
        monkeypatch.setattr(images, "load_image_data", lambda config, data_dir=None:
                            fake_data(shape, classes))
    return use


def tiny(model: str, sets=None, **flags):
    from dlcli.config import default_config

    no_hold_out = ["val_size=0"] if "val_size" in default_config(model) else []
    return resolve_config(model, None, (TINY[model] if sets is None else sets) + no_hold_out,
                          epochs=1, batch_size=8, **flags)


def cases():
    for model in IMAGE_MODELS:
        for shape in SHAPES:
            yield pytest.param(model, TINY[model], shape, id=f"{model}-{'x'.join(map(str, shape))}")
    for name, (model, sets) in VARIANTS.items():
        for shape in SHAPES:
            yield pytest.param(model, sets, shape, id=f"{name}-{'x'.join(map(str, shape))}")


def test_every_image_model_is_covered():
    assert set(IMAGE_MODELS) == set(TINY)
    assert {s.name for s in list_models()} == set(TINY) | {"transformer"}


@pytest.mark.parametrize("model, sets, shape", cases())
def test_build_train_save_load_use(model, sets, shape, data_of, tmp_path):
    data_of(shape)
    spec = get_spec(model)
    torch.manual_seed(0)
    task = spec.load_task()(spec, tiny(model, sets), torch.device("cpu"))
    assert task.data_spec["shape"] == list(shape) and task.data_spec["classes"] == CLASSES
    task.setup_data()
    logs = task.train_step(task.train_batches(0)[0])
    assert logs and all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    task.validate()  # the end of an epoch: grids of fixed noise (one row per class), metrics
    path = save_checkpoint(tmp_path / "model.safetensors", model=model, config=task.config,
                           modules=task.modules, extra=task.checkpoint_extra())

    loaded = spec.load_task().from_checkpoint(spec, load_checkpoint(path), torch.device("cpu"))
    assert loaded.data_spec == task.data_spec  # known without the data
    for name, module in task.modules.items():
        mine, theirs = module.state_dict(), loaded.modules[name].state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    if spec.samples:
        label = loaded.parse_label("ankle boot") if spec.conditional else None
        images, per_row = loaded.sample(6, label=label)
        assert images.shape[1:] == shape and 0 <= images.min() and images.max() <= 1
        if spec.conditional:
            images, per_row = loaded.sample(6, label="all")
            assert len(images) == 6 and per_row == 2  # two of each of the three classes
            assert loaded.captions(6, label="all").rows == CLASSES
    else:
        task.train_mode(False)
        x = torch.rand(5, *shape)
        assert torch.equal(loaded.predict(x), task.predict(x))
        assert loaded.predict(x).shape == (5, len(CLASSES))
    for network in loaded.networks().values():  # what export writes and checks
        outputs = network.reference(network.example(2))
        for port, out in zip(network.outputs, outputs):
            assert out.shape == (2, *port.shape)
        for port in network.inputs:
            assert port.kind != "label" or port.classes == len(CLASSES)
            assert port.kind != "unit" or port.shape == shape


def test_transformer_builds_trains_saves_loads_and_translates(tmp_path):
    spec = get_spec("transformer")
    sets = ["train_size=200", "d_model=16", "heads=2", "encoder_layers=1", "decoder_layers=1",
            "d_ff=16", "vocab_size=60", "max_len=24", "val_translate=false"]
    config = resolve_config("transformer", None, sets, epochs=1, batch_size=256)
    torch.manual_seed(0)
    task = spec.load_task()(spec, config, torch.device("cpu"))
    task.setup_data()
    logs = task.train_step(task.train_batches(0)[0])
    assert torch.isfinite(torch.tensor(logs["loss"]))
    path = save_checkpoint(tmp_path / "t.safetensors", model="transformer", config=config,
                           modules=task.modules, extra=task.checkpoint_extra())
    loaded = spec.load_task().from_checkpoint(spec, load_checkpoint(path), torch.device("cpu"))
    (best,) = loaded.translator().translate(["12"], beam=1, max_len=8)[0]
    assert isinstance(best.text, str)


# ---- labels by name ---------------------------------------------------------------------

def conditional_task(data_of, model="cvae", classes=CLASSES, shape=(3, 32, 32)):
    data_of(shape, classes)
    spec = get_spec(model)
    return spec.load_task()(spec, tiny(model), torch.device("cpu"), trains=False)


@pytest.mark.parametrize("given, index", [("cat", 0), ("ankle boot", 1), ("Ankle Boot", 1),
                                          ("zebra", 2), ("2", 2), ("0", 0), ("all", "all"),
                                          (None, None)])
def test_label_by_name_or_index(data_of, given, index):
    assert conditional_task(data_of).parse_label(given) == index


def test_a_class_named_by_a_number_is_its_name_first(data_of):
    task = conditional_task(data_of, classes=["1", "2", "3"])
    assert task.parse_label("1") == 0 and task.parse_label("0") == 0


@pytest.mark.parametrize("given", ["dog", "3", "-1", "1.5", ""])
def test_unknown_label_lists_the_classes(data_of, given):
    with pytest.raises(DlcliError) as e:
        conditional_task(data_of).parse_label(given)
    assert "cat, 'ankle boot', Zebra" in str(e.value) and "0-2" in str(e.value)


@pytest.mark.parametrize("model", [s.name for s in list_models() if s.conditional])
def test_conditional_model_on_unlabeled_data_is_refused(data_of, model):
    with pytest.raises(DlcliError, match="has no classes"):
        conditional_task(data_of, model, classes=[])


def test_unconditional_models_train_on_unlabeled_data(data_of):
    data_of((3, 32, 32), [])
    for model in ("gan", "dcgan", "vae"):
        spec = get_spec(model)
        task = spec.load_task()(spec, tiny(model), torch.device("cpu"))
        task.setup_data()
        task.train_step(task.train_batches(0)[0])
        assert task.sample(4)[0].shape == (4, 3, 32, 32)


def test_classifier_on_unlabeled_data_is_refused(data_of):
    data_of((1, 28, 28), [])
    spec = get_spec("cnn")
    with pytest.raises(DlcliError, match="needs labeled images"):
        spec.load_task()(spec, tiny("cnn"), torch.device("cpu"))


# ---- sizes ------------------------------------------------------------------------------

@pytest.mark.parametrize("model, sets, shape, words", [
    ("dcgan", TINY["dcgan"], (3, 30, 30), "dcgan takes square images"),
    ("dcgan", TINY["dcgan"], (1, 48, 64), "dcgan takes square images"),  # not square, 48 % 4 ok
    ("vae", VARIANTS["vae-conv"][1], (1, 30, 30), "each side must divide by 4"),
    ("vae", VARIANTS["vae-conv"][1], (3, 20, 22), "each side must divide by 4"),
    ("cnn", TINY["cnn"], (1, 3, 3), "at least 4x4"),
])
def test_sizes_a_network_cannot_take(model, sets, shape, words, data_of):
    data_of(shape)
    spec = get_spec(model)
    if shape == (1, 48, 64):  # the compact pair takes it: sides divisible by 4
        spec.load_task()(spec, tiny(model, sets), torch.device("cpu"))
        return
    with pytest.raises(DlcliError, match=words):
        spec.load_task()(spec, tiny(model, sets), torch.device("cpu"))


@pytest.mark.parametrize("shape", [(1, 29, 29), (3, 17, 23)])
def test_cnn_takes_odd_sizes(shape, data_of):
    data_of(shape)
    spec = get_spec("cnn")
    task = spec.load_task()(spec, tiny("cnn"), torch.device("cpu"))
    task.setup_data()
    task.train_step(task.train_batches(0)[0])


def test_dcgan_at_64_pixels_is_radfords():
    """G: z -> 8w x 4 x 4 -> ... -> C x 64 x 64 by transposed convolutions with BatchNorm;
    D: strided convolutions with LeakyReLU 0.2, no pooling, no linear hidden layer."""
    from torch import nn

    from dlcli.models.gan import build_dcgan

    config = tiny("dcgan", ["width=8", "latent_dim=16", "pack=1", "clusters=0"])
    g, d = build_dcgan(config, {"shape": [3, 64, 64], "classes": []})
    first = g.net[0]
    assert isinstance(first, nn.ConvTranspose2d) and first.out_channels == 64  # 8w
    assert g(torch.randn(2, 16)).shape == (2, 3, 64, 64)
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.Linear)) for m in d.modules())
    assert all(m.negative_slope == 0.2 for m in d.modules() if isinstance(m, nn.LeakyReLU))
    assert d(torch.rand(4, 3, 64, 64)).shape == (4,)


# ---- checkpoints -----------------------------------------------------------------------

def test_checkpoint_from_before_the_data_was_described_loads_as_mnist(tmp_path):
    """Written as the code before this change wrote it: no image_data in the metadata."""
    from dlcli.models.cnn import CNN

    config = resolve_config("cnn", None, ["channels=[2, 4]", "width=8"])
    torch.manual_seed(0)
    model = CNN((1, 28, 28), 10, (2, 4), 8, 0.3, (0.1307,), (0.3081,)).eval()
    path = save_checkpoint(tmp_path / "old.safetensors", model="cnn", config=config,
                           modules={"model": model})
    assert "image_data" not in load_checkpoint(path).meta
    spec = get_spec("cnn")
    task = spec.load_task().from_checkpoint(spec, load_checkpoint(path), torch.device("cpu"))
    assert task.data_spec == {"dataset": "mnist", "shape": [1, 28, 28],
                              "classes": [str(i) for i in range(10)],
                              "mean": [0.1307], "std": [0.3081]}
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(task.predict(x), model(x).softmax(1))  # MNIST's normalisation, as then


def test_old_fashion_mnist_checkpoint_keeps_its_class_names(tmp_path):
    from dlcli.models.vae import VAE

    config = resolve_config("cvae", None, ["hidden=[8]", "latent=2"], dataset="fashion-mnist")
    model = VAE((1, 28, 28), 2, [8], classes=10, class_prior=config["class_prior"])
    path = save_checkpoint(tmp_path / "old.safetensors", model="cvae", config=config,
                           modules={"model": model})
    spec = get_spec("cvae")
    task = spec.load_task().from_checkpoint(spec, load_checkpoint(path), torch.device("cpu"))
    assert task.parse_label("ankle boot") == 9 and task.class_names[0] == "T-shirt"


@pytest.mark.parametrize("edit", [
    {"shape": [1, 100000, 100000]}, {"shape": [1, 28]}, {"shape": "big"}, {"classes": [1, 2]},
    {"std": [0.0]}, {"mean": [0.1, 0.2]},
])
def test_forged_data_description_is_refused(edit, data_of, tmp_path):
    data_of((1, 28, 28))
    spec = get_spec("cnn")
    task = spec.load_task()(spec, tiny("cnn"), torch.device("cpu"))
    described = {**task.data_spec, **edit}
    path = save_checkpoint(tmp_path / "forged.safetensors", model="cnn", config=task.config,
                           modules=task.modules, extra={"image_data": json.dumps(described)})
    with pytest.raises(DlcliError, match="not what dlcli writes"):
        spec.load_task().from_checkpoint(spec, load_checkpoint(path), torch.device("cpu"))


def test_resuming_on_data_of_another_shape_is_refused(data_of, tmp_path):
    data_of((1, 28, 28))
    spec = get_spec("mlp")
    task = spec.load_task()(spec, tiny("mlp"), torch.device("cpu"))
    meta = {**task.checkpoint_extra(), "config": json.dumps(task.config)}
    data_of((3, 32, 32))
    resumed = spec.load_task()(spec, tiny("mlp"), torch.device("cpu"), meta=meta)
    with pytest.raises(DlcliError, match="built for made-up images of shape"):
        resumed.setup_data()


# ---- the judge ---------------------------------------------------------------------------

def saved_cnn(data_of, shape, classes, tmp_path, dataset=None):
    data_of(shape, classes)
    spec = get_spec("cnn")
    task = spec.load_task()(spec, tiny("cnn"), torch.device("cpu"))
    described = {**task.data_spec, **({"dataset": dataset} if dataset else {})}
    return save_checkpoint(tmp_path / f"cnn-{shape[0]}-{shape[1]}.safetensors", model="cnn",
                           config=task.config, modules=task.modules,
                           extra={"image_data": json.dumps(described)})


def test_judge_of_other_data_is_refused_naming_both(data_of, tmp_path):
    from dlcli.tasks.classify import load_judge

    judge = saved_cnn(data_of, (1, 28, 28), [str(i) for i in range(10)], tmp_path, "mnist")
    wanted = {"dataset": "cifar10", "shape": [3, 32, 32], "classes": CLASSES}
    with pytest.raises(DlcliError) as e:
        load_judge(judge, data=wanted)
    assert "mnist (1x28x28, 10 classes)" in str(e.value)
    assert "cifar10 (3x32x32, 3 classes)" in str(e.value)
    same_shape_other_data = {**wanted, "shape": [1, 28, 28], "dataset": "fashion-mnist"}
    with pytest.raises(DlcliError, match="trained on mnist"):
        load_judge(judge, data=same_shape_other_data)
    assert load_judge(judge, data={"dataset": "mnist", "shape": [1, 28, 28],
                                   "classes": [str(i) for i in range(10)]}) is not None


def test_unlabeled_data_takes_a_judge_of_its_shape_when_given(data_of, tmp_path):
    from dlcli.tasks.classify import load_judge

    judge = saved_cnn(data_of, (3, 32, 32), CLASSES, tmp_path)
    assert load_judge(judge, data={"dataset": "folder", "shape": [3, 32, 32], "classes": []})
    with pytest.raises(DlcliError, match="trained on made-up"):
        load_judge(judge, data={"dataset": "folder", "shape": [3, 64, 64], "classes": []})


def test_gan_on_unlabeled_data_skips_judged_metrics(data_of, capsys):
    data_of((3, 32, 32), [])
    spec = get_spec("gan")
    task = spec.load_task()(spec, tiny("gan"), torch.device("cpu"), trains=False)
    out = task.evaluate(samples=10)
    assert "cfid" not in out and "skipped" in capsys.readouterr().err


def test_label_entropy_tops_out_at_log2_of_the_classes():
    from dlcli.metrics import label_entropy

    assert label_entropy(torch.tensor([5, 5, 5])) == pytest.approx(1.5849625)
    assert label_entropy(torch.tensor([7] * 10)) == pytest.approx(3.3219281)


def test_conv_vae_keeps_halving_while_it_can():
    from dlcli.models.vae import conv_depth

    assert [conv_depth((1, s, s)) for s in (28, 32, 64, 72, 128)] == [2, 2, 3, 3, 4]


# ---- the command line ----------------------------------------------------------------------

def saved_model(data_of, model, shape, tmp_path, classes=CLASSES):
    data_of(shape, classes)
    spec = get_spec(model)
    torch.manual_seed(0)
    task = spec.load_task()(spec, tiny(model), torch.device("cpu"), trains=False)
    return save_checkpoint(tmp_path / f"{model}.safetensors", model=model, config=task.config,
                           modules=task.modules, extra=task.checkpoint_extra())


def test_sample_label_by_name_and_all_on_rgb(cli, data_of, tmp_path):
    import io

    import numpy as np
    from PIL import Image

    path = saved_model(data_of, "cgan", (3, 32, 32), tmp_path)
    proc = cli("sample", "cgan", "--checkpoint", path, "--label", "ankle boot", "-n", "4",
               "-o", "-", "--format", "npy", input=b"", check=0)
    assert np.load(io.BytesIO(proc.stdout)).shape == (4, 3, 32, 32)
    cli("sample", "cgan", "--checkpoint", path, "--label", "all", "-o", "all.png", check=0)
    picture = Image.open("all.png")
    assert picture.mode == "RGB" and picture.height > 3 * 32 * 2  # three rows, scaled twice
    proc = cli("sample", "cgan", "--checkpoint", path, "--label", "dog", check=2)
    assert proc.stderr.count("\n") == 1 and "cat, 'ankle boot', Zebra" in proc.stderr


def test_sample_of_a_model_on_unlabeled_data(cli, data_of, tmp_path):
    path = saved_model(data_of, "dcgan", (1, 64, 64), tmp_path, classes=[])
    cli("sample", "dcgan", "--checkpoint", path, "-n", "4", "-o", "four.png", check=0)
    proc = cli("sample", "dcgan", "--checkpoint", path, "--label", "3", check=2)
    assert "not conditional" in proc.stderr


def test_inspect_shows_the_data_a_checkpoint_learned(cli, data_of, tmp_path):
    path = saved_model(data_of, "cvae", (3, 32, 32), tmp_path)
    info = json.loads(cli("inspect", path, "--json", check=0).stdout)
    assert info["data"]["shape"] == [3, 32, 32] and info["data"]["classes"] == CLASSES
    text = cli("inspect", path, check=0).stdout
    assert "data: made-up  3x32x32  3 classes (cat, ankle boot, Zebra)" in text


# ---- a dataset drawn when indexed ------------------------------------------------------

@pytest.mark.parametrize("model", IMAGE_MODELS)
def test_every_image_model_trains_on_shapes(model):
    """`shapes` hands over images pasted when indexed (ShapeImages), not a tensor: every
    image model trains a step on it (its small grid, 32 px)."""
    sets = TINY[model] + ["dataset=shapes", "shapes_grid=small", "image_size=32"]
    spec = get_spec(model)
    torch.manual_seed(0)
    task = spec.load_task()(spec, tiny(model, sets), torch.device("cpu"))
    assert task.data_spec["shape"] == [1, 32, 32]
    assert task.data_spec["classes"] == ["square", "ellipse", "heart"]
    task.setup_data()
    x, y = task.train_batches(0)[0]
    assert x.shape == (8, 1, 32, 32) and x.dtype == torch.float32 and 0 < x.max() <= 1
    logs = task.train_step((x, y))
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert len(task.data_sha256()) == 64  # provenance from the dataset's digest
