"""Classifiers (perceptron, mlp, cnn): cross-entropy by backprop, or the perceptron rule."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlcli.data.toy import LINEARLY_SEPARABLE
from dlcli.errors import DlcliError
from dlcli.optim import Schedule, make_optimizer
from dlcli.registry import TOY_DATASETS
from dlcli.tasks.image import ImageTask, in_order

TOY_REPEATS = 500  # an epoch of a truth table: its 4 rows, 500 times over


def build_classifier(name: str, config: dict, in_features: int, classes: int):
    if name == "perceptron":
        from dlcli.models.perceptron import Perceptron

        return Perceptron(in_features, classes, averaged=config["averaged"])
    if name == "mlp":
        from dlcli.models.mlp import MLP

        return MLP(in_features, config["hidden"], classes, config["batchnorm"], config["dropout"])
    if name == "cnn":
        from dlcli.models.cnn import CNN

        if len(config["channels"]) != 2:
            raise DlcliError(f"the cnn has two convolution blocks, so channels takes two widths "
                             f"([32, 64], say), got {config['channels']}")
        return CNN(classes, tuple(config["channels"]), config["width"], config["dropout"])
    raise DlcliError(f"no classifier named {name!r}")


class ClassifierTask(ImageTask):
    def build(self) -> None:
        toy = self.config["dataset"] in TOY_DATASETS
        if self.config["dataset"] not in self.spec.datasets:
            raise DlcliError(
                f"{self.spec.name} cannot train on {self.config['dataset']!r}; "
                f"choose one of: {', '.join(self.spec.datasets)}")
        self.classes = 2 if toy else 10
        model = build_classifier(self.spec.name, self.config, 2 if toy else 784, self.classes)
        self.model = model.to(self.device)
        self.modules = {"model": self.model}
        self.rule = hasattr(model, "learn")  # the perceptron learns without gradients
        self.schedule = None
        self.epoch_mistakes = 0
        self.done = False

    def build_optimizers(self) -> None:
        if not self.rule:
            self.optimizers = {"model": make_optimizer(self.model.parameters(), self.config)}
            self.schedule = Schedule(self.optimizers["model"], self.config)
            self.schedulers = {"model": self.schedule.scheduler}

    def setup_data(self) -> None:
        name = self.config["dataset"]
        if name in TOY_DATASETS:
            from dlcli.data.toy import truth_table

            x, y = (t.to(self.device) for t in truth_table(name))
            self.class_names = ["0", "1"]
            self.train_data = (x.repeat(TOY_REPEATS, 1), y.repeat(TOY_REPEATS))
            self.val_data = self.test_data = (x, y)
            self.data_source = f"truth table of {name}"
        else:
            super().setup_data()
        if self.schedule is not None:
            self.schedule.total_steps = len(self.train_batches(0)) * self.config["epochs"]

    def train_step(self, batch) -> dict[str, float]:
        x, y = batch
        if self.rule:
            mistakes = self.model.learn(x, y, self.config["lr"])
            self.epoch_mistakes += mistakes
            return {"errors": mistakes / len(y)}
        logits = self.model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.config.get("label_smoothing", 0.0))
        self.optimize(loss, self.optimizers["model"])
        self.schedule.after_step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def measure(self, batches) -> dict[str, float]:
        self.model.train(False)
        total, loss, correct = 0, 0.0, 0
        for x, y in batches:
            logits = self.model(x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
        self.model.train()
        return {"loss": loss / total, "accuracy": correct / total}

    def validate(self) -> dict[str, float]:
        if self.schedule is not None:
            self.schedule.after_epoch()
        out = {}
        if self.rule:
            out["train_errors"] = self.epoch_mistakes / len(self.train_data[0])
            self.done = self.epoch_mistakes == 0  # a whole epoch without a mistake: converged
            self.model.converged.fill_(self.done)
            self.epoch_mistakes = 0
        m = self.measure(self.eval_batches("val"))
        return {"val_loss": m["loss"], "val_accuracy": m["accuracy"], **out}

    def report(self, epochs_run: int) -> str | None:
        if not self.rule:
            return None
        if self.done:
            return (f"perceptron converged after {epochs_run} epoch(s): every training example "
                    "is on the right side of its hyperplane")
        data = self.distinct_train_data()
        m = self.measure(in_order(data))
        wrong = round((1 - m["accuracy"]) * len(data[0]))
        dataset = self.config["dataset"]
        if dataset in LINEARLY_SEPARABLE:
            why = (f"{dataset} is linearly separable, so the perceptron converges if it trains "
                   f"longer: try --epochs {max(10, 2 * epochs_run)}")
        elif dataset in TOY_DATASETS:
            why = ("the classes are not linearly separable, so no single perceptron can fit them "
                   f"(an MLP can: `dlcli train mlp --dataset {dataset}`)")
        else:
            why = "no separating hyperplane was found; the classes may not be linearly separable"
        return (f"perceptron did not converge in {epochs_run} epoch(s): {wrong} training "
                f"example(s) still misclassified (training accuracy {m['accuracy']:.2%}); {why}")

    def distinct_train_data(self):
        """The distinct training examples (a truth table's 4 rows, or every training image)."""
        return self.test_data if self.config["dataset"] in TOY_DATASETS else self.train_data

    def evaluate(self, **options) -> dict:
        self.setup_eval_data()
        return self.measure(self.eval_batches("test"))

    def networks(self) -> dict:
        from dlcli.data.mnist import CLASSES
        from dlcli.export import Network, Port, Wrapped, image_port

        m, dataset = self.model, self.config["dataset"]
        if dataset in TOY_DATASETS:
            x, names = Port("x", (2,), "the truth table's two inputs, 0 or 1", kind="unit"), ["0", "1"]
        else:
            x, names = image_port(), CLASSES.get(dataset, [str(i) for i in range(self.classes)])
        probabilities = Port("probabilities", (self.classes,), "softmax of the class scores; "
                             "the class names are in the metadata (classes)")
        return {"classifier": Network(Wrapped(lambda x: m(x).softmax(1), model=m), [x],
                                      [probabilities], classes=names)}

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(1)


def load_judge(classifier=None, device="cpu", required: bool = True) -> ClassifierTask | None:
    """The cnn that scores generated images: --classifier CKPT, else the newest cnn run
    (said on stderr); with none, an error, or None when not `required`."""
    from dlcli.checkpoint import load_checkpoint
    from dlcli.registry import get_spec
    from dlcli.runs import RUNS_ROOT, announce_pick, newest_checkpoint

    path = classifier
    if path is None:
        path = newest_checkpoint("cnn", RUNS_ROOT)
        if path is None and not required:
            return None
        if path is None:
            raise DlcliError("these metrics need a trained cnn as judge: run `dlcli train cnn` "
                             "first, or pass --classifier CKPT")
        announce_pick(path, role="judge ", option="--classifier")
    ckpt = load_checkpoint(path)
    if ckpt.model not in ("cnn", "mlp"):
        raise DlcliError(f"{path} is a {ckpt.model} checkpoint; the judge must be a cnn (or mlp)")
    spec = get_spec(ckpt.model)
    return ClassifierTask.from_checkpoint(spec, ckpt, torch.device(device))
