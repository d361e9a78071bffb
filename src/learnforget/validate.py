"""One path from a mapping (a YAML file, a Ray task's config dict) to a typed spec.

`load_yaml` reads numbers in exponent form (`2e-4`) as numbers and keeps each key's line; `build(cls,
mapping, source)` checks unknown and missing fields and every value against its declared type (int,
float, bool, str, Literal, list, tuple, Optional, dict, nested dataclass), so a wrong one is one line:
`configs/x.yaml:23: methods[0].lr: expected a number, got 'fast'`. The specs themselves are in config.py.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, Union

import yaml

from .errors import UserError


# ----------------------------------------------------------------------------- YAML with line numbers


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `2e-4`, `1e5` as floats (YAML 1.1, PyYAML's resolver, wants a dot)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


@dataclass
class Source:
    """Where a mapping's values came from: the file, and the line of each key path (("methods", 0, "lr"))."""

    file: str = ""
    lines: dict = field(default_factory=dict)  # path tuple -> (file, line)

    def at(self, path: tuple) -> str:
        """`file:line` of `path`, or of its nearest located parent; the file alone when nothing is located."""
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                f, line = self.lines[path[:n]]
                return f if line is None else f"{f}:{line}"  # a --set value has no line
        return self.file


def _node_lines(node, path: tuple, file: str, out: dict) -> None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = path + (k.value,)
            out[key] = (file, k.start_mark.line + 1)
            _node_lines(v, key, file, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[path + (i,)] = (file, v.start_mark.line + 1)
            _node_lines(v, path + (i,), file, out)


def yaml_value(text: str):
    """One value written as YAML (a command line's `--set KEY=VALUE`), numbers in exponent form included."""
    return yaml.load(text, Loader=_Loader)


def load_yaml(path: str | Path) -> tuple[object, Source]:
    """A YAML file's data and its Source; a syntax error names the file, line and column."""
    path = Path(path)
    loader = _Loader(path.read_text())
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({e.problem or e.context})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    finally:
        loader.dispose()
    lines: dict = {(): (str(path), 1)}
    _node_lines(node, (), str(path), lines)
    return data, Source(str(path), lines)


def load_mapping(path: str | Path, what: str) -> tuple[dict, Source]:
    """load_yaml of a file that must hold a mapping; `what` says what one holds, for the error."""
    data, src = load_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: {what}")
    return data, src


# ----------------------------------------------------------------------------- the typed builder


def dotted(path: tuple) -> str:
    """("methods", 0, "lr") -> "methods[0].lr"."""
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(path))


def describe(tp) -> str:
    """A declared type in words, for error messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        names = [describe(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        each = " and ".join(dict.fromkeys(describe(a) for a in args if a is not Ellipsis))
        return ("a list" if origin is list else f"a list of {len(args)} items") + (f", each {each}" if each else "")
    if tp is dict or origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _fail(src: Source, path: tuple, tp, value):
    raise UserError(f"{src.at(path)}: {dotted(path)}: expected {describe(tp)}, got {value!r}".lstrip(": "))


def convert(tp, value, src: Source | None = None, path: tuple = ()):
    """`value` checked against the declared type `tp` (nested dataclasses built from mappings, tuples
    from lists); numbers are not coerced (an int stays an int), so what is hashed stays what was written."""
    src = src or Source()
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        shaped = [a for a in options if _container(a) == _container(type(value))]
        if len(shaped) == 1 and _container(type(value)):  # a mapping or list: its own errors say more
            return convert(shaped[0], value, src, path)
        for a in options:
            try:
                return convert(a, value, src, path)
            except UserError:
                continue
        _fail(src, path, tp, value)
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else build(tp, value, src, path)
    if origin is Literal:
        return value if value in args and isinstance(value, str) == any(isinstance(a, str) for a in args) else _fail(src, path, tp, value)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)) or (origin is tuple and Ellipsis not in args and len(value) != len(args)):
            _fail(src, path, tp, value)
        kinds = args if origin is tuple and Ellipsis not in args else [args[0] if args else typing.Any] * len(value)
        out = [convert(k, v, src, path + (i,)) for i, (k, v) in enumerate(zip(kinds, value))]
        return tuple(out) if origin is tuple else out
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            _fail(src, path, tp, value)
        return {k: convert(args[1], v, src, path + (k,)) for k, v in value.items()} if args else value
    ok = {bool: lambda v: isinstance(v, bool), int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), str: lambda v: isinstance(v, str)}
    return value if ok.get(tp, lambda v: True)(value) else _fail(src, path, tp, value)


def _container(tp) -> str | None:
    origin = typing.get_origin(tp) or tp
    if origin is dict or dataclasses.is_dataclass(tp):
        return "mapping"
    return "list" if origin in (list, tuple) else None


def hints(cls) -> dict:
    return typing.get_type_hints(cls)


def build(cls, value, src: Source | None = None, path: tuple = ()):
    """An instance of dataclass `cls` from a mapping: unknown and missing fields and wrong types are
    one-line UserErrors naming file:line and field; the spec's own checks (__post_init__) are located too."""
    src = src or Source()
    name = dotted(path) or cls.__name__
    if not isinstance(value, dict):
        raise UserError(f"{src.at(path)}: {name}: expected a mapping, got {value!r}".lstrip(": "))
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise UserError(f"{src.at(path)}: {name}: unknown field(s) {unknown}; known: {sorted(known)}".lstrip(": "))
    for f in known.values():
        if f.name not in value and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{src.at(path)}: {name}: missing field '{f.name}'".lstrip(": "))
    types_ = hints(cls)
    kwargs = {k: convert(types_[k], v, src, path + (k,)) for k, v in value.items()}
    try:
        return cls(**kwargs)
    except UserError as e:
        where = src.at(path)
        raise UserError(f"{where}: {e}" if where and not str(e).startswith(where) else str(e)) from None


def check_fields(obj, prefix: str = "") -> None:
    """Every field of a constructed spec against its declared type (specs built in code, not from YAML)."""
    types_ = hints(type(obj))
    for f in fields(obj):
        setattr(obj, f.name, convert(types_[f.name], getattr(obj, f.name), path=((prefix + f.name),)))
