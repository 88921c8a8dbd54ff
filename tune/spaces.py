"""Declarative search spaces: config path -> distribution, from a YAML file or a small dict.

    train.lr_head: {loguniform: [3.0e-4, 1.0e-2]}
    model.fusion_dropout: {uniform: [0.0, 0.4]}
    train.batch_size: {choice: [4, 8, 16]}

A space is checked against the run config before any trial starts: every key must be a config path that
`--set` accepts, and both ends of every range must pass the config's own validation, so a typo fails in
one line naming the key instead of in the middle of a sweep. Named spaces live in `tune/spaces/*.yaml`;
each preset has a default (`default_space_name`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from model.errors import ConfigError

SPACE_DIR = Path(__file__).parent / "spaces"
KINDS = ("loguniform", "uniform", "quniform", "randint", "choice")


@dataclass(frozen=True)
class Param:
    """One searched config value."""
    path: str                   # dotted config path, e.g. train.lr_head
    kind: str                   # one of KINDS
    args: tuple                 # (low, high), (low, high, step) or the choices

    def domain(self):
        """The Ray Tune search domain (OptunaSearch converts it to Optuna's distribution)."""
        from ray import tune

        if self.kind == "loguniform":
            return tune.loguniform(*self.args)
        if self.kind == "uniform":
            return tune.uniform(*self.args)
        if self.kind == "quniform":
            return tune.quniform(*self.args)
        if self.kind == "randint":
            return tune.randint(*self.args)
        return tune.choice(list(self.args))

    def examples(self) -> list[Any]:
        """Values at the edges of the space (what validation tries)."""
        if self.kind == "choice":
            return list(self.args)
        if self.kind == "randint":
            return [self.args[0], self.args[1] - 1]
        return [self.args[0], self.args[1]]

    def describe(self) -> str:
        return f"{self.path}: {self.kind}{list(self.args)}"


def available_spaces() -> list[str]:
    return sorted(p.stem for p in SPACE_DIR.glob("*.yaml"))


def default_space_name(config) -> str:
    """The space for a config: `mert` for a pretrained MERT backbone, `default` otherwise."""
    if config.model.audio_encoder == "mert" and config.model.mert_source and config.train.pretrained:
        return "mert"
    return "default"


def load_space(name_or_path: str | dict) -> list[Param]:
    """A named space (tune/spaces/NAME.yaml), a YAML file, or a dict -> parameters, checked for form."""
    if isinstance(name_or_path, dict):
        data, where = name_or_path, "search space"
    else:
        path = Path(name_or_path)
        if name_or_path in available_spaces():
            path = SPACE_DIR / f"{name_or_path}.yaml"
        elif not (path.suffix in (".yaml", ".yml") and path.is_file()):
            raise ConfigError(f"unknown search space {name_or_path!r}: use one of {', '.join(available_spaces())} "
                              "or an existing .yaml file")
        where = str(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{where}: a search space is a non-empty mapping of config path -> distribution")
    return [_param(where, str(key), value) for key, value in data.items()]


def _param(where: str, key: str, spec: Any) -> Param:
    if "." not in key:
        raise ConfigError(f"{where}: {key!r} is not a config path (section.key, e.g. train.lr_head)")
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in KINDS):
        raise ConfigError(f"{where}: {key} needs one distribution, e.g. {{loguniform: [1e-4, 1e-2]}} "
                          f"(kinds: {', '.join(KINDS)})")
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {key}: {kind} takes a list, e.g. {kind}: [low, high]")
    if kind == "choice":
        return Param(key, kind, tuple(args))
    want = 3 if kind == "quniform" else 2
    if len(args) != want or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ConfigError(f"{where}: {key}: {kind} takes {want} numbers, got {args!r}")
    low, high = args[0], args[1]
    if not low < high:
        raise ConfigError(f"{where}: {key}: {kind} needs low < high, got {low}, {high}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: {key}: loguniform needs low > 0, got {low}")
    if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{where}: {key}: randint takes integers, got {args!r}")
    if kind == "randint":
        args = [int(low), int(high)]
    return Param(key, kind, tuple(args))


def check_space(params: list[Param], base_config) -> None:
    """Every parameter must be a config path whose every example value the config accepts."""
    from pipelines.config import config_from_dict

    base = base_config.to_dict()
    for param in params:
        for value in param.examples():
            try:
                config_from_dict(apply_params(base, {param.path: value}))
            except ConfigError as exc:
                raise ConfigError(f"search space {param.path} = {value!r}: {exc}") from None


def apply_params(config_dict: dict, params: dict[str, Any]) -> dict:
    """A copy of a config dict with the dotted paths of `params` set (Tune's sampled values)."""
    import copy

    out = copy.deepcopy(config_dict)
    for path, value in params.items():
        node = out
        parts = path.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"search space {path}: {part!r} is not a config section")
            node = node[part]
        if isinstance(value, float) and math.isfinite(value) and isinstance(node.get(parts[-1]), int) \
                and not isinstance(node.get(parts[-1]), bool) and value.is_integer():
            value = int(value)          # quniform over an integer key
        node[parts[-1]] = value
    return out


def param_space(params: list[Param]) -> dict[str, Any]:
    return {p.path: p.domain() for p in params}
