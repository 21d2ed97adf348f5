"""The target file: what a model must run on, and how fast.

    # infra/targets/cpu-ort-fp32.yaml
    runtime: onnxruntime        # or tensorrt
    device: cpu                 # cpu | cuda | jetson-orin ...
    precision: fp32             # fp32 | fp16 | int8
    threads: 1
    batch_size: 1
    latency_budget_ms: 5.0

Unknown keys and bad values are errors naming the file and the field.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.specs import list_specs, load_spec


class TargetError(ValueError):
    pass


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="the file's stem; set by load_target")
    runtime: Literal["onnxruntime", "tensorrt"]
    device: str = Field(min_length=1)
    precision: Literal["fp32", "fp16", "int8"]
    threads: int = Field(ge=1, le=256)
    batch_size: int = Field(ge=1, le=4096)
    latency_budget_ms: float = Field(gt=0)
    input_size: int | None = Field(default=None, ge=8, description="pins the image size the search may use")
    description: str = ""

    @model_validator(mode="after")
    def _runtime_fits(self) -> Target:
        if self.runtime == "onnxruntime" and self.device != "cpu":
            raise ValueError("runtime onnxruntime targets run on device 'cpu'")
        if self.runtime == "onnxruntime" and self.precision == "fp16":
            raise ValueError("precision fp16 needs runtime tensorrt (ONNX Runtime on CPU runs fp32 or int8)")
        if self.runtime == "tensorrt" and self.device == "cpu":
            raise ValueError("runtime tensorrt needs a GPU device (cuda, jetson-...)")
        return self

    def measurable_here(self) -> tuple[bool, str]:
        """Whether this machine can build and time the target's engine, and why not."""
        if self.runtime == "onnxruntime":
            return True, "ONNX Runtime on this CPU"
        if importlib.util.find_spec("tensorrt") is None:
            return False, "tensorrt is not installed"
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA device"
        return True, f"TensorRT on {torch.cuda.get_device_name(0)}"


def load_target(path: Path | str) -> Target:
    return load_spec(path, Target, "target", TargetError)


def list_targets(folder: Path) -> dict[str, Path]:
    """{name: path} of every target file in ``folder``."""
    return list_specs(folder)


def target_file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
