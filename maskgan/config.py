"""Config plumbing shared by every component: dict/YAML round trips, `--set a.b=c` overrides, CLI flags.

Each component keeps its own frozen dataclass config next to the code it configures; this module
only knows how to build, override, print and save such dataclasses. Fields marked secret
(`field(metadata={"secret": True})`) never leave memory: they are dropped from dicts and YAML.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

SECRET = {"secret": True}


def to_dict(config: Any, include_secrets: bool = False) -> dict[str, Any]:
    """A nested dataclass -> plain dict (secret fields left out unless asked for)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"to_dict expects a dataclass instance, got {type(config).__name__}")
    out: dict[str, Any] = {}
    for item in dataclasses.fields(config):
        if item.metadata.get("secret") and not include_secrets:
            continue
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value, include_secrets)
        elif isinstance(value, tuple):
            value = list(value)
        out[item.name] = value
    return out


def _coerce(annotation: Any, value: Any, where: str) -> Any:
    """Turn a YAML/JSON value into the field's declared type (nested dataclasses, tuples, optionals)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except (TypeError, ValueError) as error:
                errors.append(str(error))
        raise ValueError(f"{where}: {value!r} fits none of {annotation} ({'; '.join(errors)})")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping for {annotation.__name__}, got {value!r}")
        return from_dict(annotation, value, where)
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise ValueError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=True))
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            raise ValueError(f"{where}: {value!r} is not one of {typing.get_args(annotation)}")
        return value
    if annotation is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, str, bool) and not isinstance(value, annotation):
        raise ValueError(f"{where}: expected {annotation.__name__}, got {value!r}")
    if annotation is int and isinstance(value, bool):
        raise ValueError(f"{where}: expected int, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build a (nested) dataclass from a dict, rejecting unknown keys by name."""
    hints = typing.get_type_hints(cls)
    known = {item.name for item in dataclasses.fields(cls) if item.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join((where + '.' if where else '') + k for k in unknown)} "
            f"for {cls.__name__}; known keys: {', '.join(sorted(known))}"
        )
    kwargs = {
        name: _coerce(hints[name], value, f"{where + '.' if where else ''}{name}")
        for name, value in data.items()
    }
    return cls(**kwargs)


def _deep_update(base: dict, extra: Mapping) -> dict:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            base[key] = _deep_update(dict(base[key]), value)
        else:
            base[key] = value
    return base


def merge(config: T, updates: Mapping[str, Any]) -> T:
    """Return a copy of `config` with nested `updates` applied (validation runs again)."""
    return from_dict(type(config), _deep_update(to_dict(config, include_secrets=True), updates))


def parse_override(text: str) -> dict[str, Any]:
    """'a.b=c' -> {'a': {'b': c}} with c parsed as YAML (so 3, 0.5, true, [1, 2] keep their types)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key.subkey=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as error:
        raise ValueError(f"override {text!r}: the value is not valid YAML ({error})") from None
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load(
    cls: type[T],
    base: T,
    yaml_path: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """base (a preset) <- YAML file <- `--set` overrides, in that order."""
    updates: dict[str, Any] = {}
    if yaml_path:
        updates = dict(read_yaml(yaml_path))
    for text in overrides:
        updates = _deep_update(updates, parse_override(text))
    # Applied together, validated once: fields checked as a pair (both credentials) can come from
    # two --set flags.
    config = merge(base, updates)
    if not isinstance(config, cls):
        raise TypeError(f"expected {cls.__name__}, built {type(config).__name__}")
    return config


def read_yaml(yaml_path: str | Path) -> Mapping[str, Any]:
    """A YAML config file as a mapping; ValueError naming the file (and line) when it is not one."""
    path = Path(yaml_path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path} line {mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"config file {where}: not valid YAML ({problem})") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Nested dicts (as to_dict makes them) -> ['a.b: old -> new', ...] for every field that differs."""
    out = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            out += differences(before, after, f"{prefix}{key}.")
        elif before != after:
            out.append(f"{prefix}{key}: {before!r} -> {after!r}")
    return out


def to_yaml(config: Any) -> str:
    """The config as YAML, secrets left out."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def fingerprint(config: Any, exclude: Sequence[str] = ()) -> str:
    """A stable hash of the config's public fields (top-level `exclude` keys left out)."""
    data = {k: v for k, v in to_dict(config).items() if k not in exclude}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def add_config_arguments(parser: argparse.ArgumentParser, presets: Mapping[str, Callable[[], Any]]) -> None:
    """Add --preset / --config / --set / --print-config to an entrypoint's parser."""
    parser.add_argument(
        "--preset", choices=sorted(presets), default=next(iter(presets)),
        help="named starting config (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file applied on top of the preset")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one field, e.g. --set resolution=256 (repeatable; applied last)",
    )  # fmt: skip
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def config_from_arguments(
    cls: type[T], presets: Mapping[str, Callable[[], T]], args: argparse.Namespace
) -> T:
    """Resolve the config an entrypoint's flags describe."""
    return load(cls, presets[args.preset](), args.config, args.overrides)
