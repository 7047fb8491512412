"""Mixed precision for the train step: which one a device runs fast, autocast, and fp16's gradient scaler.

``auto`` picks bf16 autocast where the device has native bf16 kernels (a CPU with AVX-512 BF16 or AMX;
a CUDA GPU of compute capability 8.0 or newer), fp16 autocast with a gradient scaler on older CUDA GPUs
(Colab's T4: ``torch.cuda.is_bf16_supported()`` says True there, but only by emulation), fp32 otherwise.
Only the forward pass runs in low precision: the parameters, the optimizer state, the BatchNorm
statistics, the loss and the history stay fp32.

``fp64`` is for checks, not for training: parameters, batches and the loss in float64, where the order in which
a CPU's kernels sum moves a short run's numbers by about 1e-12 instead of fp32's 1e-3, so one recorded run can be
compared on any CPU (``tests/test_recipes_unchanged.py``). It is several times slower than fp32.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "fp64")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matmuls and convolutions natively (not emulated, so not slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> fp32 | bf16 | fp16 for ``device``; an explicit name is checked and returned."""
    if name not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}; got {name!r}")
    if name != "auto":
        return name
    if native_bf16(device):
        return "bf16"
    return "fp16" if device.type == "cuda" else "fp32"


class Precision:
    """The train step's precision and memory format on one device: ``autocast()`` around the forward pass, then
    ``backward(loss)``, ``unscale(optimizer)`` (before reading gradients) and ``step(optimizer)``.

    With fp16 a ``torch.amp.GradScaler`` scales the loss; a step it skips because a gradient overflowed
    is normal (it lowers the scale and goes on), and ``step`` returns False for it.
    """

    def __init__(self, name: str = "fp32", device: torch.device | str = "cpu", channels_last: bool = False):
        self.device = torch.device(device)
        self.name = resolve_precision(name, self.device)
        self.dtype = DTYPES.get(self.name)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.name == "fp16" else None
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.param_dtype = torch.float64 if self.name == "fp64" else torch.float32  # parameters, batches
        self.loss_dtype = self.param_dtype  # the logits are cast to it before the loss

    @contextlib.contextmanager
    def building(self):
        """Where a model is constructed: with fp64, float64 is the default dtype inside, so its initial weights are
        drawn in float64 (float32 draws differ in their last bit between CPUs' vector kernels, and a short run
        amplifies that to 1e-3); otherwise nothing changes."""
        if self.param_dtype != torch.float64:
            yield
            return
        before = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            yield
        finally:
            torch.set_default_dtype(before)

    def place(self, model: nn.Module) -> nn.Module:
        """``model`` on the device in the memory format; with fp64 its parameters in float64, and a forward
        pre-hook casts every floating input to float64, so any caller (checks, summary, range test, figures)
        can pass the float32 batches it has."""
        model = model.to(self.device, memory_format=self.memory_format)
        if self.param_dtype == torch.float64:
            model = model.to(torch.float64)
            model.register_forward_pre_hook(_inputs_to_float64)
        return model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """A batch (B, 3, H, W) on the device, in the model's memory format."""
        return x.to(self.device, non_blocking=True, memory_format=self.memory_format,
                    dtype=self.param_dtype if x.is_floating_point() else None)

    def __repr__(self) -> str:
        fmt = ", channels_last" if self.memory_format == torch.channels_last else ""
        return f"{self.name}{' autocast' if self.dtype else ''}{' + grad scaler' if self.scaler else ''}{fmt}"

    def autocast(self):
        """Autocast to bf16/fp16 for the forward pass; nothing in fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale(self, optimizer) -> None:
        """Bring the gradients back to their true size (fp16), so the doctor reads real values."""
        if self.scaler:
            self.scaler.unscale_(optimizer)

    @property
    def overflow_expected(self) -> bool:
        """fp16 with a scaler: an inf gradient now and then is the scaler's business, not a finding."""
        return self.scaler is not None

    def hopeless(self) -> bool:
        """The scaler has backed off below 1: the gradients overflow even unscaled, a real inf/NaN."""
        return self.scaler is not None and self.scaler.get_scale() < 1.0

    def step(self, optimizer) -> None:
        """The optimizer step (fp16: the scaler's, which skips it when a gradient overflowed, then its update)."""
        if not self.scaler:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return {"name": self.name, "scaler": self.scaler.state_dict() if self.scaler else None}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def _inputs_to_float64(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
