"""Typed training configs: recipes (YAML) and ``--set key=value`` overrides are parsed here only.

Unknown keys and invalid values are rejected with a one-line :class:`SparsenetsError` naming the
key, the value and what would be valid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .allocation import DISTRIBUTIONS
from .data import DATASETS
from .dst.backend import BACKENDS
from .dst.registry import METHODS, method_options
from .errors import SparsenetsError, check_density, choice_error
from .loggers import logger_names
from .models import MODELS

#: ``sparsity.method`` values: ``dense`` trains without a sparsifier.
TRAIN_METHODS = ("dense", *METHODS)
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("cosine", "constant")


class SparsityConfig(BaseModel):
    """The ``sparsity:`` block. Keys beyond the generic ones are the method's hyperparameters."""

    model_config = ConfigDict(extra="allow", frozen=True)

    method: str = "rigl"
    density: float = 0.1
    distribution: str | dict[str, float] = "erk"
    include: list[str] | None = None
    exclude: list[str] | None = None
    dense_first: bool = False
    dense_last: bool = False
    #: where the initial mask comes from: random with ``distribution`` (default), or pruning at
    #: initialization (``snip``, ``grasp``, ``synflow``, ``magnitude``, ``random``)
    init: str | None = None
    #: the allocation of ``init`` (default: ``global``, or ``distribution`` for ``init: random``)
    init_allocation: str | None = None

    @field_validator("init")
    @classmethod
    def _init(cls, value: str | None) -> str | None:
        from .prune import METHODS as INIT_METHODS

        if value is not None and value.lower() not in INIT_METHODS:
            raise choice_error("sparsity.init", value, INIT_METHODS)
        return None if value is None else value.lower()

    @model_validator(mode="after")
    def _init_needs_a_fixed_budget(self) -> SparsityConfig:
        if self.init is not None and self.method in ("dense", "gmp", "granet"):
            raise SparsenetsError(
                f"sparsity.init gives the initial mask of a sparse run; method {self.method!r} starts "
                f"{'dense' if self.method != 'dense' else 'without masks'} (use static or a DST method)"
            )
        return self

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value.lower() not in TRAIN_METHODS:
            raise choice_error("method", value, TRAIN_METHODS)
        return value.lower()

    @field_validator("density")
    @classmethod
    def _density(cls, value: float) -> float:
        return check_density(value, "sparsity.density")

    @field_validator("distribution")
    @classmethod
    def _distribution(cls, value: str | dict[str, float]) -> str | dict[str, float]:
        if isinstance(value, str) and value.lower() not in DISTRIBUTIONS:
            raise choice_error("distribution", value, DISTRIBUTIONS)
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _method_options(self) -> SparsityConfig:
        extra = dict(self.model_extra or {})
        if self.method == "dense":
            valid: tuple[str, ...] = ()
        else:
            valid = method_options(self.method)
        for key in extra:
            if key not in valid:
                generic = [k for k in SparsityConfig.model_fields]
                raise SparsenetsError(
                    f"unknown recipe key 'sparsity.{key}' for method {self.method!r} "
                    f"(valid: {', '.join(generic + list(valid))})"
                )
        return self

    @property
    def options(self) -> dict[str, Any]:
        """The method hyperparameters set in the recipe."""
        return dict(self.model_extra or {})


#: How an IMP round chooses the weights to prune: one magnitude threshold across layers, LAMP
#: scores across layers, or the same fraction of every layer.
LOTTERY_ALLOCATIONS = ("global", "lamp", "layer")


class LotteryConfig(BaseModel):
    """The ``lottery:`` block: iterative magnitude pruning with rewinding (lottery tickets).

    Each round trains ``epochs`` epochs, prunes ``ceil(prune_fraction · remaining)`` weights by
    magnitude, rewinds the survivors to their values at ``rewind_step`` (0: the initialization)
    and trains again, until ``sparsity.density`` is reached.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prune_fraction: float = 0.2
    rewind_step: int = 0
    allocation: str = "global"
    #: Lottery Pools: interpolate the final ticket with those of adjacent rounds, kept when the
    #: validation accuracy (``validation_size`` examples held out of training) improves.
    pools: bool = False

    @field_validator("prune_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            raise ValueError(f"must be in (0, 1), got {value}")
        return value

    @field_validator("rewind_step")
    @classmethod
    def _rewind(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    @field_validator("allocation")
    @classmethod
    def _allocation(cls, value: str) -> str:
        if value not in LOTTERY_ALLOCATIONS:
            raise choice_error("lottery allocation", value, LOTTERY_ALLOCATIONS)
        return value


class TrainConfig(BaseModel):
    """A training recipe: data, model, optimizer, schedule and sparsity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "run"
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    model: str = "mlp"
    hidden: list[Annotated[int, Field(gt=0)]] = [1024, 512]
    activation: str = "relu"
    channels: list[Annotated[int, Field(gt=0)]] = [32, 64]
    epochs: int = 10
    batch_size: int = 128
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0, allow_inf_nan=False)
    momentum: float = Field(0.9, ge=0, lt=1, allow_inf_nan=False)
    weight_decay: float = Field(5e-4, ge=0, allow_inf_nan=False)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    label_smoothing: float = Field(0.0, ge=0, lt=1, allow_inf_nan=False)
    seed: int = 0
    device: str = "auto"
    threads: int | None = Field(None, gt=0)
    #: a step whose loss or gradients are not finite: ``error`` (stop, naming the step and the
    #: first such parameter; the last checkpoint stays) or ``skip`` (no update; counted).
    nonfinite: Literal["error", "skip"] = "error"
    #: under ``torch.distributed``: compare a checksum of the masks across ranks after every
    #: topology update and stop at the first difference (on by default; one small all-gather per
    #: update; ``false`` turns it off). No effect in a single process.
    check_masks: bool = True
    #: also write a checkpoint after every N-th optimizer step inside an epoch (None: at epoch
    #: ends only); ``--resume`` then continues from the middle of the epoch.
    checkpoint_every: int | None = Field(None, gt=0)
    #: ``masked`` (dense weights times masks), ``sparse`` (CSR nn.Linear layers) or ``auto``.
    backend: str = "masked"
    #: per-step loggers: ``csv`` (``steps.csv``), ``tensorboard``; ``[]`` logs no steps.
    loggers: list[str] = ["csv"]
    sparsity: SparsityConfig = SparsityConfig()
    #: training examples held out as a validation set (0: none); never trained on.
    validation_size: int = 0
    #: iterative magnitude pruning (lottery tickets); ``sparsity.method`` must be ``static``.
    lottery: LotteryConfig | None = None

    @field_validator("loggers", mode="before")
    @classmethod
    def _loggers(cls, value: Any) -> Any:
        return logger_names(value) if value is None or isinstance(value, str | list | tuple) else value

    @field_validator("activation")
    @classmethod
    def _activation(cls, value: str) -> str:
        from .models.mlp import ACTIVATIONS

        if value not in ACTIVATIONS:
            raise choice_error("activation", value, ACTIVATIONS)
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value or "/" in value or "\\" in value or value in (".", "..") or value.startswith("~"):
            raise SparsenetsError(
                f"name {value!r} must be a plain name (no path separators); "
                f"choose where the run goes with --out"
            )
        return value

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        if not isinstance(value, str) or value.lower() not in BACKENDS:
            raise choice_error("backend", value, BACKENDS)
        return value.lower()

    @model_validator(mode="after")
    def _backend_needs_sparsity(self) -> TrainConfig:
        if self.backend != "masked" and self.sparsity.method == "dense":
            raise SparsenetsError(
                f"backend {self.backend!r} needs a sparse method (sparsity.method is 'dense')"
            )
        return self

    @model_validator(mode="after")
    def _lottery_trains_fixed_masks(self) -> TrainConfig:
        if self.lottery is None:
            return self
        if self.sparsity.method != "static":
            raise SparsenetsError(
                f"a lottery run trains every round with a fixed mask: set sparsity.method to 'static' "
                f"(got {self.sparsity.method!r})"
            )
        if self.backend != "masked":
            raise SparsenetsError(f"a lottery run uses backend 'masked' (got {self.backend!r})")
        if self.lottery.pools and self.validation_size < 1:
            raise SparsenetsError(
                "lottery.pools chooses on a validation split: set validation_size (e.g. 5000 training "
                "examples held out)"
            )
        return self

    @field_validator("dataset", "model")
    @classmethod
    def _known_name(cls, value: str, info: ValidationInfo) -> str:
        valid = DATASETS if info.field_name == "dataset" else MODELS
        if value not in valid:
            raise choice_error(info.field_name, value, valid)
        return value

    @field_validator("validation_size")
    @classmethod
    def _validation_size(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    @field_validator("epochs", "batch_size")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be a positive integer, got {value}")
        return value

    @field_validator("lr")
    @classmethod
    def _lr(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(f"must be > 0, got {value}")
        return value

    def model_options(self) -> dict[str, Any]:
        """Keyword options for :func:`sparsenets.models.build_model`."""
        if self.model == "mlp":
            return {"hidden": tuple(self.hidden), "activation": self.activation}
        return {"channels": tuple(self.channels), "hidden": self.hidden[0] if self.hidden else 128}

    def to_yaml(self) -> str:
        """The resolved config as YAML (method options inlined in ``sparsity``)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# -- parsing at the edge ---------------------------------------------------------------------
def _one_line(error: ValidationError) -> SparsenetsError:
    first = error.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        valid = ", ".join(TrainConfig.model_fields)
        return SparsenetsError(f"unknown recipe key {loc!r} (valid: {valid})")
    message = first["msg"].removeprefix("Value error, ")
    bad = first.get("input")
    where = f"recipe key {loc!r}" if loc else "recipe"
    return SparsenetsError(f"invalid value {bad!r} for {where}: {message}")


def build_config(data: Mapping[str, Any]) -> TrainConfig:
    """Validate a plain dict (from YAML) into a :class:`TrainConfig` (one-line errors)."""
    if not isinstance(data, Mapping):
        raise SparsenetsError(f"a recipe must be a mapping of keys to values, got {type(data).__name__}")
    try:
        return TrainConfig.model_validate(dict(data))
    except ValidationError as error:
        cause = error.errors()[0].get("ctx", {}).get("error")
        if isinstance(cause, SparsenetsError):
            raise SparsenetsError(str(cause)) from None
        raise _one_line(error) from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"sparsity.density=0.05"`` → ``(["sparsity", "density"], 0.05)`` (value read as YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise SparsenetsError(f"--set expects KEY=VALUE (e.g. sparsity.density=0.05), got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``--set`` overrides applied (nested keys with dots)."""
    result = yaml.safe_load(yaml.safe_dump(data)) or {}
    for item in overrides:
        path, value = parse_override(item)
        node = result
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SparsenetsError(f"cannot set {item!r}: {part!r} is not a mapping")
            node = child
        node[path[-1]] = value
    return result


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping safely; a missing or malformed file gives a one-line error."""
    path = Path(path)
    if not path.is_file():
        hint = ""
        recipes = sorted(p.name for p in Path("recipes").glob("*.yaml")) if Path("recipes").is_dir() else []
        if recipes:
            hint = f" (recipes here: {', '.join(recipes)})"
        raise SparsenetsError(f"recipe file {str(path)!r} not found{hint}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SparsenetsError(f"recipe {str(path)!r} is not a text file (expected YAML)") from None
    except yaml.YAMLError as error:
        raise SparsenetsError(f"recipe {str(path)!r} is not valid YAML: {str(error).splitlines()[0]}") from None
    if data is None:
        raise SparsenetsError(f"recipe {str(path)!r} is empty (start from one in recipes/)")
    if not isinstance(data, dict):
        raise SparsenetsError(f"recipe {str(path)!r} must be a mapping of keys to values")
    return data


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> TrainConfig:
    """Read a recipe file, apply ``--set`` overrides, validate. ``name`` defaults to the file stem."""
    data = read_yaml(path)
    data.setdefault("name", Path(path).stem)
    return build_config(apply_overrides(data, overrides))
