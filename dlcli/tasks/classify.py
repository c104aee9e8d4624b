"""Classifiers: cross-entropy by backprop (mlp, cnn), or the perceptron learning rule."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlcli.data.toy import LINEARLY_SEPARABLE
from dlcli.errors import DlcliError
from dlcli.optim import Schedule, make_optimizer
from dlcli.tasks.image import ImageTask, Split, shape_text

TOY_REPEATS = 500  # an epoch of a truth table: its 4 rows, 500 times over


def is_toy(config: dict) -> bool:
    from dlcli.data.catalog import names_of_kinds

    return config["dataset"] in names_of_kinds(("toy",))


class ClassifierTask(ImageTask):
    """A network that maps an input to class scores, trained by gradient descent."""

    def build_networks(self) -> None:
        if self.classes < 2:
            raise DlcliError(f"a classifier needs labeled images of at least two classes; "
                             f"{self.data_spec['dataset']} has {self.classes or 'no'} class"
                             f"{'' if self.classes == 1 else 'es'} (give a folder one subfolder "
                             "per class)")
        self.model = self.spec.build(self.config, self.data_spec).to(self.device)
        self.modules = {"model": self.model}
        self.schedule = None

    def describe_data(self) -> dict:
        if is_toy(self.config):  # a truth table: two inputs, two classes, nothing to load
            from dlcli.data.catalog import get_dataset

            table = get_dataset(self.config["dataset"])
            return {"dataset": table.name, "shape": list(table.shape),
                    "classes": list(table.classes)}
        return super().describe_data()

    def build_optimizers(self) -> None:
        self.optimizers = {"model": make_optimizer(self.model.parameters(), self.config)}
        self.schedule = Schedule(self.optimizers["model"], self.config)
        self.schedulers = {"model": self.schedule.scheduler}

    def setup_data(self) -> None:
        name = self.config["dataset"]
        if is_toy(self.config):
            from dlcli.data.toy import truth_table

            x, y = (t.to(self.device) for t in truth_table(name))
            rows = torch.arange(len(x), device=self.device)
            self.train_data = Split(x, y, rows.repeat(TOY_REPEATS))
            self.val_data = self.test_data = Split(x, y, rows)
            self.data_source = f"truth table of {name}"
            self.data_digest = None  # hashed from the table when asked
        else:
            super().setup_data()
        if self.schedule is not None:
            self.schedule.total_steps = len(self.train_batches(0)) * self.config["epochs"]

    def train_step(self, batch) -> dict[str, float]:
        x, y = batch
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
        m = self.measure(self.eval_batches("val"))
        return {"val_loss": m["loss"], "val_accuracy": m["accuracy"]}

    def evaluate(self, **options) -> dict:
        self.setup_eval_data()
        return self.measure(self.eval_batches("test"))

    def networks(self) -> dict:
        from dlcli.export import Network, Port, Wrapped, image_port

        m = self.model
        if is_toy(self.config):
            x = Port("x", tuple(self.data_spec["shape"]), "the truth table's two inputs, 0 or 1",
                     kind="unit")
        else:
            x = image_port(shape=self.data_spec["shape"])
        probabilities = Port("probabilities", (self.classes,), "softmax of the class scores; "
                             "the class names are in the metadata (classes)")
        return {"classifier": Network(Wrapped(lambda x: m(x).softmax(1), model=m), [x],
                                      [probabilities], classes=self.class_names)}

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(1)


class PerceptronTask(ClassifierTask):
    """Rosenblatt's learning rule instead of gradients: no optimizer, and an epoch without a
    mistake means the perceptron has converged."""

    def build_networks(self) -> None:
        super().build_networks()
        self.epoch_mistakes = 0

    def build_optimizers(self) -> None:
        """The rule needs none."""

    def train_step(self, batch) -> dict[str, float]:
        x, y = batch
        mistakes = self.model.learn(x, y, self.config["lr"])
        self.epoch_mistakes += mistakes
        return {"errors": mistakes / len(y)}

    def validate(self) -> dict[str, float]:
        errors = self.epoch_mistakes / self.epoch_images()
        self.done = self.epoch_mistakes == 0  # a whole epoch without a mistake: converged
        self.model.converged.fill_(self.done)
        self.epoch_mistakes = 0
        return {**super().validate(), "train_errors": errors}

    def report(self, epochs_run: int) -> str | None:
        if self.done:
            return (f"perceptron converged after {epochs_run} epoch(s): every training example "
                    "is on the right side of its hyperplane")
        # the distinct training examples: a truth table's 4 rows, or every training image
        data = self.test_data if is_toy(self.config) else self.train_data
        m = self.measure(self.batches_of(data))
        wrong = round((1 - m["accuracy"]) * len(data))
        dataset = self.config["dataset"]
        if dataset in LINEARLY_SEPARABLE:
            why = (f"{dataset} is linearly separable, so the perceptron converges if it trains "
                   f"longer: try --epochs {max(10, 2 * epochs_run)}")
        elif is_toy(self.config):
            why = ("the classes are not linearly separable, so no single perceptron can fit them "
                   f"(an MLP can: `dlcli train mlp --dataset {dataset}`)")
        else:
            why = "no separating hyperplane was found; the classes may not be linearly separable"
        return (f"perceptron did not converge in {epochs_run} epoch(s): {wrong} training "
                f"example(s) still misclassified (training accuracy {m['accuracy']:.2%}); {why}")


def describe_judge(spec: dict) -> str:
    return f"{spec['dataset']} ({shape_text(spec['shape'])}, {len(spec['classes'])} classes)"


def load_judge(classifier=None, device="cpu", required: bool = True,
               data: dict | None = None) -> ClassifierTask | None:
    """The cnn that scores generated images: --classifier CKPT, else the newest cnn run
    (said on stderr); with none, an error, or None when not `required`. Given the
    description of the data the scored model learned (`data`), a judge that learned other
    data is refused, naming both: its features and classes mean nothing for these images."""
    from dlcli.checkpoint import load_checkpoint
    from dlcli.registry import get_spec
    from dlcli.runs import RUNS_ROOT, announce_pick, newest_checkpoint

    path = classifier
    if path is None:
        path = newest_checkpoint("cnn", RUNS_ROOT)
        if path is None and not required:
            return None
        if path is None:
            where = f" --dataset {data['dataset']}" if data else ""
            raise DlcliError(f"these metrics need a trained cnn as judge: run `dlcli train cnn"
                             f"{where}` first, or pass --classifier CKPT")
        announce_pick(path, role="judge ", option="--classifier")
    ckpt = load_checkpoint(path)
    if ckpt.model not in ("cnn", "mlp"):
        raise DlcliError(f"{path} is a {ckpt.model} checkpoint; the judge must be a cnn (or mlp)")
    spec = get_spec(ckpt.model)
    judge = spec.load_task().from_checkpoint(spec, ckpt, torch.device(device))
    if data is not None and not judges(judge.data_spec, data):
        raise DlcliError(f"the judge {path} was trained on {describe_judge(judge.data_spec)}, "
                         f"this model on {describe_judge(data)}: train a cnn on the same data "
                         "(`dlcli train cnn` with the same --dataset or --data), and pass it "
                         "with --classifier")
    return judge


def judges(judge: dict, data: dict) -> bool:
    """Can a classifier that learned `judge` score images like those of `data`? The same
    images: same shape, and, when the data has classes, the same dataset and classes (an
    unlabeled folder has no classes to learn, so any judge of its shape is the user's call)."""
    if list(judge["shape"]) != list(data["shape"]):
        return False
    return not data["classes"] or (judge["dataset"] == data["dataset"]
                                   and list(judge["classes"]) == list(data["classes"]))
