"""The target file: what a model must run on, and how fast.

    # infra/targets/cpu-ort-fp32.yaml
    runtime: onnxruntime        # or tensorrt
    device: cpu                 # cpu | cuda (any GPU) | t4 (that GPU) | jetson-orin (that board)
    precision: fp32             # fp32 | fp16 | int8
    threads: 1
    batch_size: 1
    latency_budget_ms: 5.0

Unknown keys and bad values are errors naming the file and the field.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.errors import InputError
from pipeline.specs import list_specs, load_spec


class TargetError(InputError, ValueError):
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
        """Whether this machine can build and time the target's engine on the device it names, and why not.

        ``cpu``: ONNX Runtime here. TensorRT targets need tensorrt and then the device itself: ``cuda`` takes
        any CUDA GPU; ``jetson-<board>`` a Jetson whose board model (/proc/device-tree/model) names every
        word of ``<board>`` (``jetson-orin``: an Orin, never a datacenter card); any other name (``t4``,
        ``rtx-4090``) a CUDA device whose name holds each of its words (``a10`` is not an A100).
        """
        if self.runtime == "onnxruntime":
            return True, "ONNX Runtime on this CPU"
        if importlib.util.find_spec("tensorrt") is None:
            return False, "tensorrt is not installed"
        device = self.device.lower()
        if device == "jetson" or device.startswith("jetson-"):
            board = board_model()
            if board is None:
                return False, f"not a Jetson board (no {BOARD_MODEL}), so {self.device} cannot be proven here"
            wanted = _words(device.removeprefix("jetson"))
            have = _words(board)
            if not ({"jetson", "nvidia"} & have and wanted <= have):
                return False, f"this board ({board}) is not a Jetson {' '.join(sorted(wanted))}"
            return True, f"TensorRT on {board}"
        gpu = cuda_device_name()
        if gpu is None:
            return False, "no CUDA device"
        if device != "cuda" and not _words(device) <= _words(gpu):
            return False, f"the CUDA device ({gpu}) is not a {self.device}"
        return True, f"TensorRT on {gpu}"


BOARD_MODEL = Path("/proc/device-tree/model")


def _words(text: str) -> set[str]:
    return {w for w in re.split(r"[^a-z0-9]+", text.lower()) if w}


def cuda_device_name() -> str | None:
    """The name of CUDA device 0 (``Tesla T4``), None where there is none."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def board_model() -> str | None:
    """A device-tree board's model (``NVIDIA Jetson AGX Orin Developer Kit``), None where there is none."""
    try:
        return BOARD_MODEL.read_text(errors="replace").strip("\x00 \n") or None
    except OSError:
        return None


def tensorrt_version() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return None
    import tensorrt

    return str(tensorrt.__version__)


def load_target(path: Path | str) -> Target:
    return load_spec(path, Target, "target", TargetError)


def list_targets(folder: Path) -> dict[str, Path]:
    """{name: path} of every target file in ``folder``."""
    return list_specs(folder)


def target_file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
