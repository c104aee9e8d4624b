"""dlcli export (onnx, torchscript, safetensors, ctranslate2) and dlcli predict."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, run_cli

from dlcli.checkpoint import load_checkpoint, save_checkpoint
from dlcli.config import resolve_config
from dlcli.registry import get_spec

pytestmark = pytest.mark.usefixtures("one_thread")
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
SMALL = {  # small widths: the export path is what is tested, not the model
    "gan": ["g_hidden=[32, 64]", "d_hidden=[32]", "latent_dim=8"],
    "cgan": ["g_hidden=[32, 64]", "d_hidden=[32]", "latent_dim=8"],
    "dcgan": ["width=4", "latent_dim=8"],
    "vae": ["latent=6", "hidden=[32]"],
    "cvae": ["latent=4", "hidden=[32]"],
    "cnn": ["channels=[4, 8]", "width=16"],
    "mlp": ["hidden=[32, 16]"],
}
VARIANTS = {  # case: (model, keys), for layers a model's default preset does not build
    "vae-broadcast": ("vae", ["latent=6", "hidden=[32]", "arch=conv", "channels=4",
                              "decoder=broadcast"]),
}


@contextlib.contextmanager
def one_torch_thread():
    """For module fixtures (the one_thread fixture is per test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fresh_checkpoint(model: str, folder: Path, sets: list[str] | None = None) -> Path:
    """A freshly initialised model saved the way training saves it; BatchNorm's running
    statistics are made up, so evaluation-mode normalisation is part of what is compared."""
    spec = get_spec(model)
    config = resolve_config(model, None, SMALL[model] if sets is None else sets)
    task = spec.load_task()(spec, config, torch.device("cpu"), trains=False)
    g = torch.Generator().manual_seed(1)
    for module in task.modules.values():
        for name, buffer in module.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=g) * 0.3)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=g) + 0.5)
    return save_checkpoint(folder / f"{model}.safetensors", model=model, config=config,
                           modules=task.modules, extra=task.checkpoint_extra())


def rebuilt(path: Path):
    ckpt = load_checkpoint(path)
    spec = get_spec(ckpt.model)
    return spec.load_task().from_checkpoint(spec, ckpt, torch.device("cpu"))


# ---- ONNX ----------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(SMALL) + list(VARIANTS))
def test_onnx_matches_pytorch_at_batch_1_and_64(case, tmp_path):
    pytest.importorskip("onnx", reason="the export extra is not installed (pip install 'dlcli[export]')")
    ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    import onnx

    from dlcli.export import export

    model, sets = VARIANTS.get(case, (case, None))
    ckpt = fresh_checkpoint(model, tmp_path, sets)
    networks = rebuilt(ckpt).networks()
    for part, network in networks.items():
        path = export(ckpt, "onnx", tmp_path / f"{model}-{part}.onnx", part=part)
        meta = {p.key: p.value for p in onnx.load(path).metadata_props}
        signature = json.loads(meta["dlcli"])
        assert signature["model"] == model and signature["part"] == part
        assert [p["name"] for p in signature["inputs"]] == [p.name for p in network.inputs]
        assert all(p["shape"][0] == "batch" for p in signature["inputs"] + signature["outputs"])
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [p.name for p in network.inputs]
        module = rebuilt(ckpt).networks()[part].module.eval()  # PyTorch, from the checkpoint
        for batch in (1, 64):
            inputs = network.example(batch, seed=100 + batch)
            with torch.no_grad():
                want = module(*inputs)
            want = list(want) if isinstance(want, tuple) else [want]
            got = session.run(None, {p.name: x.numpy() for p, x in zip(network.inputs, inputs)})
            for w, g in zip(want, got):
                assert g.shape == tuple(w.shape)
                assert np.abs(g - w.numpy()).max() <= 1e-4
    assert ("label" in [p.name for p in networks[next(iter(networks))].inputs]) == \
        get_spec(model).conditional


def test_vae_exports_decoder_by_default_and_encoder_on_request(tmp_path):
    pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    from dlcli.errors import DlcliError
    from dlcli.export import export

    ckpt = fresh_checkpoint("cvae", tmp_path)
    decoder = run_cli("export", ckpt, "--format", "onnx", check=0, env=ONE_THREAD)
    assert decoder.stdout.strip() == str(tmp_path / "cvae-decoder.onnx")
    assert export(ckpt, "onnx", part="encoder") == tmp_path / "cvae-encoder.onnx"
    with pytest.raises(DlcliError, match="exists; not overwriting"):
        export(ckpt, "onnx")
    with pytest.raises(DlcliError, match="choose one of: decoder, encoder"):
        export(ckpt, "onnx", tmp_path / "x.onnx", part="critic")


def test_a_mismatch_fails_and_leaves_no_file(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    from dlcli import export as export_module

    ckpt = fresh_checkpoint("mlp", tmp_path)
    real = export_module.Network.reference
    monkeypatch.setattr(export_module.Network, "reference",
                        lambda self, inputs: [t + 1e-3 for t in real(self, inputs)])
    with pytest.raises(export_module.ExportMismatch, match="differs from PyTorch by 0.001") as e:
        export_module.export(ckpt, "onnx", tmp_path / "mlp.onnx")
    assert e.value.exit_code == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.safetensors"]


# ---- TorchScript -----------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_carries_how_to_call_it(tmp_path):
    from dlcli.export import export

    ckpt = fresh_checkpoint("cgan", tmp_path)
    path = export(ckpt, "torchscript")
    extra = {"dlcli.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    signature = json.loads(extra["dlcli.json"])
    assert [p["name"] for p in signature["inputs"]] == ["z", "label"]
    z, label = torch.randn(5, 8), torch.arange(5)
    images = loaded(z, label)
    assert images.shape == (5, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    task = rebuilt(ckpt)
    with torch.no_grad():
        assert torch.allclose(images, (task.sampler(z, label) + 1) / 2, atol=1e-5)


# ---- weights only ----------------------------------------------------------------------

def test_weights_only_checkpoint_is_smaller_and_still_evaluates(tmp_path):
    from dlcli.errors import DlcliError
    from dlcli.export import export
    from dlcli.inspect import describe
    from dlcli.train import check_resumable, train

    config = resolve_config("mlp", None, ["hidden=[8]"], dataset="xor", epochs=1)
    ckpt = train(get_spec("mlp"), config, device="cpu", run_dir=tmp_path / "run")
    path = export(ckpt, "safetensors")
    assert path.name == "best-weights.safetensors"
    light, full = load_checkpoint(path), load_checkpoint(ckpt)
    assert "state" not in light.meta and not any(k.startswith("state/") for k in light.tensors)
    assert path.stat().st_size < Path(ckpt).stat().st_size
    weights = {k for k in full.tensors if k.startswith("model/")}
    assert weights == light.tensors.keys()
    assert rebuilt(path).evaluate() == rebuilt(ckpt).evaluate()
    assert describe(path)["model"] == "mlp"
    with pytest.raises(DlcliError, match="no training state"):
        check_resumable(light, 2)


def test_format_and_model_must_fit(tmp_path):
    from dlcli.errors import DlcliError
    from dlcli.export import export

    ckpt = fresh_checkpoint("gan", tmp_path)
    with pytest.raises(DlcliError, match="onnx or torchscript"):
        export(ckpt, "ctranslate2")
    with pytest.raises(DlcliError, match="onnx, torchscript, safetensors, ctranslate2"):
        export(ckpt, "tflite")


# ---- CTranslate2 -----------------------------------------------------------------------

NUMBERS = ["train_size=1500", "d_model=32", "heads=2", "encoder_layers=1", "decoder_layers=1",
           "d_ff=64", "val_translate=false", "max_len=24", "warmup=30", "lr=0.005"]


@pytest.fixture(scope="module")
def numbers_model(tmp_path_factory):
    """A small numbers Transformer, trained long enough to write number words."""
    pytest.importorskip("ctranslate2", reason="the ctranslate2 extra is not installed "
                        "(pip install 'dlcli[ctranslate2]')")
    from dlcli.train import train

    folder = tmp_path_factory.mktemp("numbers")
    config = resolve_config("transformer", None, NUMBERS, epochs=2, batch_size=1024, seed=0)
    with one_torch_thread():
        return train(get_spec("transformer"), config, device="cpu", run_dir=folder / "run")


def test_ctranslate2_greedy_matches_dlcli(numbers_model, tmp_path):
    from dlcli.ct2 import load_translator
    from dlcli.data.text import numbers_corpus
    from dlcli.export import export

    folder = export(numbers_model, "ctranslate2", tmp_path / "ct2")
    assert {"model.bin", "config.json", "tokenizer.json", "dlcli.json"} <= {p.name for p in folder.iterdir()}
    sources = numbers_corpus(1500).splits["test"][0][:150] + ["", "12"]
    ours = [h[0].text for h in rebuilt(numbers_model).translator().translate(sources, beam=1)]
    theirs = run_cli("translate", "--engine", "ctranslate2", "--checkpoint", folder, "--beam", "1",
                     input="\n".join(sources) + "\n", check=0, env=ONE_THREAD).stdout.splitlines()
    assert len(theirs) == len(sources) and theirs[-2] == ""
    assert theirs == ours
    assert sum("thousand" in line or "hundred" in line for line in ours) > 50  # real words
    on_the_fly = load_translator(numbers_model, "cpu")  # a checkpoint is converted first
    assert [h[0].text for h in on_the_fly.translate(sources[:20], beam=1)] == ours[:20]
    beams = on_the_fly.translate(sources[:3], beam=3, n_best=2)
    assert all(len(h) == 2 and h[0].score >= h[1].score for h in beams)


@pytest.mark.parametrize("pre_norm,tie", [(False, False), (True, True)])
def test_ctranslate2_spec_covers_post_norm_and_untied_embeddings(pre_norm, tie, tmp_path):
    pytest.importorskip("ctranslate2", reason="the ctranslate2 extra is not installed")
    from dlcli.ct2 import check_scores, save_spec

    config = resolve_config("transformer", None, NUMBERS[1:] + [
        "train_size=200", f"pre_norm={str(pre_norm).lower()}", f"tie_embeddings={str(tie).lower()}"])
    spec = get_spec("transformer")
    task = spec.load_task()(spec, config, torch.device("cpu"), trains=False)
    for p in task.model.parameters():  # away from the initial ones (LayerNorm 1 and 0)
        p.data.add_(torch.randn_like(p) * 0.05)
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "t.safetensors", model="transformer",
                                           config=config, modules=task.modules,
                                           extra=task.checkpoint_extra()))
    save_spec(task, ckpt, tmp_path, None)
    check_scores(task.model, task.tokenizer, tmp_path)  # raises past 1e-4


def test_ctranslate2_refuses_a_folder_it_did_not_write(tmp_path):
    pytest.importorskip("ctranslate2", reason="the ctranslate2 extra is not installed")
    from dlcli.ct2 import load_translator
    from dlcli.errors import DlcliError

    (tmp_path / "other").mkdir()
    with pytest.raises(DlcliError, match="dlcli export --format ctranslate2"):
        load_translator(tmp_path / "other")


# ---- predict ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    from dlcli.train import train

    if not (SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("real MNIST not available at ../shared/data")
    folder = tmp_path_factory.mktemp("mlp")
    config = resolve_config("mlp", None, ["hidden=[64]"], epochs=1, batch_size=128, seed=0)
    with one_torch_thread():
        return train(get_spec("mlp"), config, device="cpu", data_dir=SHARED_DATA,
                     run_dir=folder / "run")


def test_predict_agrees_with_the_classifier_and_reads_inverted_and_large_images(
        digits_classifier, tmp_path):
    from PIL import Image

    from dlcli.data.mnist import load_images

    data = load_images("mnist", SHARED_DATA)


    x, y = data.test_x[:40], data.test_y[:40]
    paths = []
    for i, image in enumerate(x[:, 0].numpy()):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    task = rebuilt(digits_classifier)
    direct = task.predict(x.float() / 255)
    lines = run_cli("predict", digits_classifier, *paths, check=0, env=ONE_THREAD).stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in paths]
    assert [int(line.split("\t")[1]) for line in lines] == direct.argmax(1).tolist()
    probs = [float(line.split("\t")[3]) for line in lines]
    assert np.allclose(probs, direct.max(1).values.numpy(), atol=1e-4)

    right = [i for i in range(40) if direct[i].argmax() == y[i]][:5]
    photos = []
    for i in right:  # a dark digit on light paper, larger, in colour, off-centre
        ink = np.asarray(Image.fromarray(x[i, 0].numpy()).resize((90, 90), Image.BILINEAR), float)
        paper = np.full((160, 130), 215.0)
        paper[20:110, 30:120] -= ink * 0.75
        photos.append(tmp_path / f"photo-{i}.jpg")
        Image.fromarray(paper.clip(0, 255).astype(np.uint8)).convert("RGB").save(photos[-1])
        photos.append(tmp_path / f"inverted-{i}.png")
        Image.fromarray(255 - x[i, 0].numpy()).save(photos[-1])
    out = run_cli("predict", digits_classifier, "--json", input="\n".join(map(str, photos)) + "\n",
                  check=0, env=ONE_THREAD).stdout.splitlines()
    answers = [json.loads(line) for line in out]
    assert [a["label"] for a in answers] == [int(y[i]) for i in right for _ in range(2)]
    assert all(a["class"] == str(a["label"]) and 0 < a["probability"] <= 1 for a in answers)


def test_predict_errors(digits_classifier, tmp_path):
    from PIL import Image

    good = tmp_path / "ok.png"
    Image.new("L", (28, 28)).save(good)
    (tmp_path / "bad.png").write_text("not an image")
    proc = run_cli("predict", digits_classifier, tmp_path / "bad.png", good, tmp_path / "missing.png",
                   env=ONE_THREAD)
    assert proc.returncode == 2
    assert proc.stdout.splitlines()[0].startswith(f"{good}\t")  # the others are answered
    errors = proc.stderr.splitlines()
    assert any("bad.png" in e and "Pillow" in e for e in errors)
    assert any("missing.png" in e and "no such file" in e for e in errors)
    assert "Traceback" not in proc.stderr
    from dlcli.errors import DlcliError
    from dlcli.predict import load_classifier

    with pytest.raises(DlcliError, match="is a gan checkpoint; predict needs a classifier"):
        load_classifier(fresh_checkpoint("gan", tmp_path))
