"""Settings: every list of choices, the training settings as one typed dataclass, and the recipes.

Imports nothing heavy (no torch), so the command line can build its flags from it quickly. Each
:class:`TrainConfig` field carries its flag's help text (and choices) in its metadata; ``lenet
train`` makes one flag per field from them.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import Field, asdict, dataclass, field, fields, replace

from lenet.errors import LenetError

OPTIMIZERS = ("sgd", "adam", "adamw", "sdlm")  # sdlm: the 1998 paper's, see lenet.optim
SCHEDULERS = ("none", "step", "onecycle", "cosine", "paper")
# The 1998 paper's eta per pass (appendix C; section V-B): (passes, eta), the last for the rest.
PAPER_ETAS = ((2, 5e-4), (3, 2e-4), (3, 1e-4), (4, 5e-5), (None, 1e-5))
DEVICES = ("auto", "cpu", "cuda", "mps")
DATASETS = ("mnist", "fashion-mnist")  # see lenet.data
SELECT_ON = ("val", "test", "last")
NORMALIZE = ("model", "totensor", "mnist")
AUGMENTS = ("none", "affine", "elastic", "both")  # see lenet.augment
# Parts --augment joins with "+" (e.g. affine+stroke+lowres); "both" is affine+elastic.
AUGMENT_PARTS = ("affine", "elastic", "stroke", "aspect", "lowres", "continental")
BACKENDS = ("torch", "onnx")  # what runs the network in predict/serve: PyTorch or ONNX Runtime
# Image files taken from folders by suffix (lenet predict DIR, lenet eval --images DIR).
IMAGE_SUFFIXES = frozenset(
    ".png .jpg .jpeg .jpe .bmp .gif .tif .tiff .webp .pgm .ppm .pbm .pnm".split()
)


def augment_parts(kind: str) -> frozenset[str]:
    """The distortions an ``--augment`` value names (empty for ``none``); one ``LenetError``
    line for anything else."""
    if kind == "none":
        return frozenset()
    names = ["affine", "elastic"] if kind == "both" else kind.split("+")
    if any(n not in AUGMENT_PARTS for n in names) or len(set(names)) != len(names):
        raise LenetError(
            f"--augment must be none, both, or one or more of {', '.join(AUGMENT_PARTS)} "
            f"joined by + (e.g. affine+stroke), not {kind!r}"
        )
    return frozenset(names)


def paper_eta(epoch: int) -> float:
    """The 1998 paper's eta for pass ``epoch`` (0-based): 5e-4 for 2 passes, 2e-4 for 3, 1e-4
    for 3, 5e-5 for 4, 1e-5 after."""
    for passes, eta in PAPER_ETAS:
        if passes is None or epoch < passes:
            return eta
        epoch -= passes
    raise AssertionError("PAPER_ETAS ends with (None, eta)")


def model_names() -> list[str]:
    """The registered models (imported on demand: the registry needs torch)."""
    from lenet.models import list_models

    return list_models()


def setting(default, help: str, choices=None, flag: bool = True):
    """A :class:`TrainConfig` field with its ``lenet train`` help text and choices (a tuple, or
    a function returning them); ``flag=False`` keeps it off the command line."""
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag})


@dataclass
class TrainConfig:
    """Every knob of a training run; saved as plain types in ``config.json`` and each checkpoint."""

    model: str = setting("lenet5-relu", "network", model_names)
    dataset: str = setting("mnist", "which digits (or clothes) to train on", DATASETS)
    recipe: str = setting("fast", "the settings every flag left out comes from", None, flag=False)
    epochs: int = setting(3, "passes over the training images")
    batch_size: int = setting(256, "images per step (the global batch under data parallelism)")
    lr: float = setting(1.5e-2, "learning rate (peak LR for onecycle)")
    optimizer: str = setting("adamw", "update rule", OPTIMIZERS)
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(1e-4, "L2 penalty (decoupled for adamw)")
    scheduler: str = setting(
        "onecycle",
        "LR schedule; none = the note's printed loop; paper = the 1998 paper's eta per pass "
        "(5e-4 x2, 2e-4 x3, 1e-4 x3, 5e-5 x4, then 1e-5), scaled so pass 1 is --lr",
        SCHEDULERS,
    )
    sdlm_mu: float = setting(0.02, "sdlm's mu: each step is lr / (mu + h_kk) * gradient")
    rbf_j: float = setting(
        0.0,
        "lenet5-1998's MAP loss constant j (the rubbish class exp(-j) in the paper's eq. 9); "
        "0 = left out (j -> infinity)",
    )
    step_size: int = setting(10, "StepLR period in epochs")
    gamma: float = setting(0.1, "StepLR decay factor")
    val_size: int = setting(5000, "images held out from the END of the training set")
    select_on: str = setting("val", "the split that picks best.pt", SELECT_ON)
    normalize: str = setting(
        "model", "input scaling: the model's own, ToTensor's [0,1] or MNIST mean/std", NORMALIZE
    )
    augment: str = setting(
        "none",
        "random distortions of each training batch: affine (rotate/scale/shear/shift, as "
        "the 1998 paper), elastic (Simard et al. 2003), both (the two), stroke (stroke width), "
        "aspect (width/height ratio), lowres (coarse resolution), continental (flagged 1s, "
        "crossed 7s; MNIST only); join parts with +, e.g. "
        "affine+stroke+lowres; or none",
    )
    seed: int = setting(0, "seeds the weights, the data order, dropout and distortions")
    device: str = setting("auto", "where to train (auto = cuda, then mps, then cpu)", DEVICES)
    threads: int = setting(0, "CPU threads (0 = PyTorch's choice)")
    eval_batch_size: int = setting(1000, "images per batch when scoring the held-out split")
    limit: int = setting(0, "train on the first N images only (0 = all; smoke tests)")
    data_dir: str = setting("data", "dataset folder")
    out: str = setting("runs", "parent folder of run folders")
    name: str = setting("", "run folder name (empty: <model>-<recipe>-<time>)")

    def to_dict(self) -> dict:
        """Plain-typed dict (JSON- and weights_only-safe)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Rebuild from :meth:`to_dict`, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in known})
        cfg.recipe = RECIPE_ALIASES.get(cfg.recipe, cfg.recipe)
        return cfg


def flag_fields() -> list[Field]:
    """The :class:`TrainConfig` fields that ``lenet train`` offers as flags, in order."""
    return [f for f in fields(TrainConfig) if f.metadata.get("flag", True)]


RBF_MODEL = "lenet5-1998"  # the one model with an RBF output, whose MAP loss --rbf-j sets
PAPER_BATCH = 8  # the paper recipe's batch (the paper: 1; see RECIPES["paper"])

# Each recipe is a set of overrides on the dataclass defaults ("fast" is the defaults themselves).
RECIPES: dict[str, dict] = {
    # The project's own recipe: >= 99% test accuracy in 3 epochs, best model on held-out val.
    "fast": {},
    # Exactly the study note's recipe: ToTensor scaling, batch 16, SGD(1e-3, momentum 0.9),
    # StepLR(10, 0.1) stepped each epoch, best model chosen on the test set as the note does.
    "note": dict(
        model="lenet5",
        epochs=30,
        batch_size=16,
        lr=1e-3,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=0.0,
        scheduler="step",
        step_size=10,
        gamma=0.1,
        val_size=0,
        select_on="test",
        normalize="totensor",
    ),
    # Fashion-MNIST (d2l's LeNet chapter), lenet5-relu: the fast recipe for 10 epochs on all
    # 60,000 training images (onecycle ends at its best, so the last epoch is kept) with AdamW
    # weight decay 0.1 against the overfitting 3 epochs do not reach: test 91.05/91.09/91.34/90.94%
    # over seeds 0-3 (600,000 images: ~8.6 s of training at the fast recipe's 70,000 img/s).
    "fashion": dict(
        dataset="fashion-mnist", epochs=10, val_size=0, select_on="last", weight_decay=0.1
    ),
    # The 1998 paper's own training (appendix C, section V-B) for lenet1, lenet4 or lenet5-1998
    # (--model; lenet5-1998 the default): 20 passes of stochastic diagonal Levenberg-Marquardt
    # (mu 0.02, h_kk re-estimated on 500 images before each pass), the paper's eta per pass, no
    # weight decay, all 60,000 training images, the model after the last pass kept (no
    # selection on the test set). Batch: the paper updates after every image; batch 1 costs
    # Python's per-step overhead 60,000 times a pass on a CPU (134 s a pass on one thread against
    # 24 s at batch 8), so the recipe uses batch 8 with the paper's eta per image times the batch
    # (the loss is the batch's mean, so a pass moves the weights as far as the paper's 60,000
    # steps): one pass at batch 8 and 4e-3 matched batch 1 at 5e-4 (docs/training.md, "The
    # paper's training"). lenet5-1998's MAP loss keeps its rubbish class with j = 1 (the paper
    # gives no j): 97.99% test accuracy after 2 passes against 97.18% with j left out; other
    # models have no RBF output, so make_config drops the recipe's j for them.
    "paper": dict(
        model="lenet5-1998",
        epochs=20,
        batch_size=PAPER_BATCH,
        lr=PAPER_ETAS[0][1] * PAPER_BATCH,
        rbf_j=1.0,
        optimizer="sdlm",
        weight_decay=0.0,
        scheduler="paper",
        val_size=0,
        select_on="last",
    ),
}
# Old recipe names still accepted, with a deprecation warning: old name -> current name.
RECIPE_ALIASES = {"seed": "note"}


def recipe_name(recipe: str) -> str:
    """``recipe`` itself, or the current name of a deprecated one (warning once per call)."""
    if recipe in RECIPE_ALIASES:
        new = RECIPE_ALIASES[recipe]
        msg = f"recipe {recipe!r} is now called {new!r}; {recipe!r} will be removed"
        logging.getLogger("lenet").warning(msg)
        warnings.warn(msg, DeprecationWarning, stacklevel=3)
        return new
    if recipe not in RECIPES:
        raise LenetError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    return recipe


def given_overrides(overrides: dict) -> dict:
    """The overrides that were given (not None), each a :class:`TrainConfig` field (else one
    ``LenetError`` line), a deprecated recipe name mapped to its current one. Every path that
    applies overrides (a recipe, a ``config=``, a resume) goes through here."""
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise LenetError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    if "recipe" in given:
        given["recipe"] = recipe_name(given["recipe"])
    return given


def make_config(recipe: str | None = "fast", **overrides) -> TrainConfig:
    """Recipe defaults (``None`` = fast), then every non-None override; validated."""
    recipe = recipe_name(recipe or "fast")
    cfg = replace(TrainConfig(), recipe=recipe, **RECIPES[recipe])
    given = given_overrides(overrides)
    cfg = replace(cfg, **given)
    if "rbf_j" not in given and cfg.model != RBF_MODEL:  # a recipe's j is for the RBF output
        cfg = replace(cfg, rbf_j=0.0)
    validate(cfg)
    return cfg


# Random streams of a run: (epoch multiplier, offset) of each. These are the numbers every
# release so far has used, so measured results (docs/, the accuracy gate) stay reproducible.
_STREAMS = {"order": (1, 0), "augment": (1, 7_919), "dropout": (1_009, 0)}


def derive_seed(seed: int, purpose: str, epoch: int = 0, rank: int = 0) -> int:
    """The seed of one random stream of a run: a pure function of (run seed, purpose, epoch,
    rank), so a resumed run and every data-parallel rank draw exactly what they should without
    sharing RNG state. Purposes: "order" (the epoch's shuffle), "augment" (its distortions),
    "dropout" (its masks; one stream per rank)."""
    multiplier, offset = _STREAMS[purpose]
    return seed * 1_000_003 + epoch * multiplier + offset + rank


# The longest a distributed collective may wait for a peer (--dist-timeout, LENET_DIST_TIMEOUT).
MAX_DIST_TIMEOUT_S = 7 * 86400.0


def validate(cfg: TrainConfig) -> None:
    """Raise :class:`LenetError` with one clear line for any impossible setting."""

    def choice(name: str, allowed: tuple) -> None:
        if getattr(cfg, name) not in allowed:
            raise LenetError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}")

    choice("optimizer", OPTIMIZERS)
    choice("scheduler", SCHEDULERS)
    choice("device", DEVICES)
    choice("dataset", DATASETS)
    choice("select_on", SELECT_ON)
    choice("normalize", NORMALIZE)
    if "continental" in augment_parts(cfg.augment) and cfg.dataset != "mnist":
        raise LenetError("--augment continental draws digits' strokes: MNIST only")
    for name in ("epochs", "batch_size", "eval_batch_size", "step_size"):
        if getattr(cfg, name) < 1:
            raise LenetError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("val_size", "limit", "threads"):
        if getattr(cfg, name) < 0:
            raise LenetError(f"--{name.replace('_', '-')} must not be negative")
    # Floats: nan passes every comparison test (nan <= 0 is False) and inf trains NaN weights, so
    # finiteness is checked first, by name, before the range of each.
    for name in ("lr", "momentum", "weight_decay", "gamma", "sdlm_mu", "rbf_j"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LenetError(f"--{name.replace('_', '-')} must be a number (got {value!r})")
        if not math.isfinite(value):
            raise LenetError(f"--{name.replace('_', '-')} must be a finite number (got {value})")
    if cfg.lr <= 0:
        raise LenetError("--lr must be positive")
    if not 0 <= cfg.momentum < 1:
        raise LenetError(f"--momentum must be at least 0 and below 1 (got {cfg.momentum:g})")
    if cfg.weight_decay < 0:
        raise LenetError(f"--weight-decay must not be negative (got {cfg.weight_decay:g})")
    if cfg.sdlm_mu <= 0:
        raise LenetError(f"--sdlm-mu must be positive (got {cfg.sdlm_mu:g})")
    if cfg.rbf_j < 0:
        raise LenetError(f"--rbf-j must not be negative (0 = left out; got {cfg.rbf_j:g})")
    if cfg.rbf_j and cfg.model != RBF_MODEL:
        raise LenetError(
            "--rbf-j is the MAP loss of lenet5-1998's RBF output; other models have none"
        )
    if not 0 < cfg.gamma <= 1:
        raise LenetError(f"--gamma must be above 0 and at most 1 (got {cfg.gamma:g})")
    cores = os.cpu_count() or 1
    if cfg.threads > cores:
        raise LenetError(
            f"--threads {cfg.threads} is more than the {cores} CPU cores here (0 = PyTorch's choice)"
        )
    if cfg.select_on == "val" and cfg.val_size == 0:
        raise LenetError("--select-on val needs a validation split (--val-size > 0)")
