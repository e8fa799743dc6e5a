"""Device names: one parser for every verb's --device and for the library's resolve_device."""

from __future__ import annotations

import argparse

import pytest
import torch

from gptsmith.device import device_arg, parse_device, resolve_device
from gptsmith.errors import ConfigError


@pytest.mark.parametrize("name, parsed", [
    ("auto", "auto"), ("cpu", "cpu"), ("CPU", "cpu"), ("cuda", "cuda"), ("cuda:1", "cuda:1"), ("mps", "mps"),
])
def test_the_device_spellings(name, parsed):
    assert parse_device(name) == parsed


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:", "cuda:x", "cpu:0", ""])
def test_an_unknown_device_is_one_clear_error(name):
    message = f"unknown device {name!r} (choose from auto, cpu, cuda, cuda:N, mps)"
    with pytest.raises(ConfigError) as error:
        resolve_device(name)  # not torch's RuntimeError listing every backend it knows
    assert str(error.value) == message
    with pytest.raises(argparse.ArgumentTypeError, match="unknown device"):
        device_arg(name)


def test_resolve_device_checks_what_is_there():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cuda:3 asked for, but PyTorch sees no CUDA GPU"):
            resolve_device("cuda:3")
    else:
        with pytest.raises(ConfigError, match="sees only"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize("native", [True, False])
def test_bf16_autocast_warns_only_where_the_cpu_emulates_bf16(monkeypatch, recwarn, native):
    from gptsmith import device

    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert device.resolve_autocast_dtype("bf16", cpu, 768) == torch.bfloat16  # asked for: given, warned
    assert device.resolve_autocast_dtype("auto", cpu, 768) == (torch.bfloat16 if native else None)
    assert device.resolve_autocast_dtype("fp32", cpu, 768) is None
    messages = [str(w.message) for w in recwarn]
    warning = ("this CPU has no native bf16 instructions, so bf16 runs far slower than fp32 here; "
               "use --dtype fp32 (or auto)")
    assert messages == ([] if native else [warning])
