"""One YAML file per thing (a target, a fleet), validated by a pydantic model; errors name the file and field."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def load_spec(path: Path | str, model: type[M], kind: str, error: type[ValueError]) -> M:
    """``model(name=<file stem>, **<the file>)``; anything wrong is one ``error`` naming the file and the field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise error(f"{path}: cannot read {kind} file ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: a {kind} file is a mapping of fields, got {type(raw).__name__}")
    if "name" in raw:
        raise error(f"{path}: field 'name': not allowed (a {kind}'s name is its file name)")
    try:
        return model(name=path.stem, **raw)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            field = ".".join(str(p) for p in e["loc"]) or "(file)"
            msg = {"extra_forbidden": "unknown field", "missing": "missing (required)"}.get(e["type"], e["msg"])
            problems.append(f"field '{field}': {msg}")
        raise error(f"{path}: " + "; ".join(problems)) from None


def list_specs(folder: Path) -> dict[str, Path]:
    """{name: path} of every ``*.yaml`` in ``folder``."""
    return {p.stem: p for p in sorted(Path(folder).glob("*.yaml"))}
