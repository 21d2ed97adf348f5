"""``infra/fleets/NAME.yaml``: a pydantic schema; every error names the file and the field."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.errors import InputError
from pipeline.specs import list_specs, load_spec


class FleetError(InputError, ValueError):
    pass


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    percent: int = Field(gt=0, le=100, description="share of the fleet's devices in this stage and before")
    min_devices: int = Field(default=1, ge=0, description="devices of the stage that must run the version")
    soak_s: float = Field(default=0, ge=0, description="seconds the stage runs before the next may start")


class AbortRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_failure_share: float = Field(default=0.0, ge=0, le=1)
    max_p99_regression: float = Field(default=0.2, ge=0)
    min_agreement: float = Field(default=0.99, ge=0, le=1)


class Fleet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    target: str = Field(min_length=1)
    model: str = Field(min_length=1)
    stages: list[Stage] = Field(min_length=1)
    abort: AbortRules = AbortRules()

    @model_validator(mode="after")
    def _stages_grow_to_all(self) -> Fleet:
        shares = [s.percent for s in self.stages]
        if shares != sorted(set(shares)):
            raise ValueError("stages: percent must strictly increase")
        if shares[-1] != 100:
            raise ValueError("stages: the last stage must reach 100 percent")
        return self

    def agent_rules(self) -> dict[str, float]:
        """What the devices check on their own (vitforge_edge.checks.Rules)."""
        return {"max_p99_regression": self.abort.max_p99_regression, "min_agreement": self.abort.min_agreement}


def load_fleet(path: Path | str) -> Fleet:
    return load_spec(path, Fleet, "fleet", FleetError)


def list_fleets(folder: Path) -> dict[str, Path]:
    return list_specs(folder)
