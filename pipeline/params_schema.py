"""The schema of params.yaml: the packaged file is its own schema, read through pydantic.

Every section and key of the packaged params.yaml must be there, no other, each of the type its default has
(a whole number where the default is one, a number where it is a float; null, a setting's "off", everywhere;
a key whose default is null or ``auto`` takes any value, and the stage that reads it checks it). A violation
is one ``ParamsError`` naming the key, with the nearest known key for a typo.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError, create_model

from pipeline.errors import ParamsError

SCHEMA_SOURCE = Path(__file__).resolve().parent / "project_template" / "params.yaml"  # the packaged defaults
AUTO = "auto"


def _type(default: Any) -> Any:
    if default is None or default == AUTO:
        return Any
    if isinstance(default, bool):
        return StrictBool
    if isinstance(default, int):
        return StrictInt
    if isinstance(default, float):
        return StrictFloat | StrictInt
    if isinstance(default, str):
        return StrictStr
    if isinstance(default, list):
        return list
    return Any


def _model(name: str, defaults: dict[str, Any], top: bool = True) -> type[BaseModel]:
    """Sections (mappings at the top) are models of their own; a mapping inside a section (``budget.shares``)
    is one value."""
    fields = {key: ((_model(key, d, top=False) if top else dict) if isinstance(d, dict) else _type(d) | None, ...)
              for key, d in defaults.items()}  # null: the "off" of a setting (``ema_decay: null``), never a type error
    return create_model(f"params_{name}", __config__=ConfigDict(extra="forbid"), **fields)


@lru_cache(maxsize=1)
def _schema() -> tuple[type[BaseModel], dict[str, Any]]:
    defaults = yaml.safe_load(SCHEMA_SOURCE.read_text(encoding="utf-8"))
    return _model("params", defaults), defaults


def validate(params: Any, source: str = "params.yaml") -> None:
    """Raise a one-line ParamsError for the first key of ``params`` that the schema refuses."""
    model, defaults = _schema()
    if not isinstance(params, dict):
        raise ParamsError(f"{source}: expected a mapping of sections to parameters")
    try:
        model.model_validate(params)
    except ValidationError as err:
        # an unknown key first: a typo (``epoch:``) explains the key it leaves missing (``epochs``)
        e = sorted(err.errors(), key=lambda x: (x["type"] != "extra_forbidden", x["type"] == "missing"))[0]
        loc = tuple(e["loc"])
        if e["type"] not in ("extra_forbidden", "missing"):  # a union's member (``lr.float``) is not a key
            while len(loc) > 1 and _lookup(defaults, loc) is None:
                loc = loc[:-1]
        e["loc"] = loc
        key = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            known = _known(defaults, e["loc"][:-1])
            near = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            hint = f" (did you mean {'.'.join([*map(str, e['loc'][:-1]), near[0]])}?)" if near else ""
            raise ParamsError(f"{source}: {key}: unknown key{hint}") from None
        if e["type"] == "missing":
            what = "section" if len(e["loc"]) == 1 else "key"
            raise ParamsError(f"{source}: {key}: missing {what} (every key of the packaged params.yaml is needed)"
                              ) from None
        default = _lookup(defaults, e["loc"])
        raise ParamsError(f"{source}: {key}: expected {_describe(default)}, got {e.get('input')!r}") from None


def _known(defaults: dict[str, Any], loc: tuple) -> list[str]:
    node = _lookup(defaults, loc) if loc else defaults
    return list(node) if isinstance(node, dict) else []


def _lookup(defaults: dict[str, Any], loc: tuple) -> Any:
    node: Any = defaults
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# what a default's type asks for, in words (bool before int: a bool is an int)
_WORDS = ((bool, "true or false"), (int, "a whole number"), (float, "a number"), (str, "a string"),
          (list, "a list"), (dict, "a mapping"))


def _describe(default: Any) -> str:
    return next((words for kind, words in _WORDS if isinstance(default, kind)), "a value")
