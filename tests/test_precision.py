"""train.precision auto: bf16 only where the hardware has it, resolved once into config.yaml; a bf16 run
resumes bit-identically."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from test_train import data_dir, tiny_config  # noqa: F401 - the module fixture is used below

from memsv_cli.errors import MemsvError
from memsv_cli.train.checkpoint import load_checkpoint
from memsv_cli.train.precision import native_bf16, resolve_precision
from memsv_cli.train.trainer import train

CPU = torch.device("cpu")


def cpu_has(monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected", "reason"),
    [(True, True, "bf16", "AMX"), (False, True, "bf16", "AVX512-BF16"), (False, False, "fp32", None)],
)
def test_auto_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, amx, avx512_bf16, expected, reason) -> None:
    cpu_has(monkeypatch, amx, avx512_bf16)
    assert native_bf16(CPU) == reason
    precision, note = resolve_precision("auto", CPU)
    assert precision == expected and note is not None and note.startswith(f"train.precision auto: {expected}")
    for choice in ("fp32", "bf16", "fp16"):  # a named precision is never second-guessed
        assert resolve_precision(choice, CPU) == (choice, None)


def test_auto_on_cuda_asks_the_card(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert resolve_precision("auto", cuda)[0] == "fp32"  # a 2080Ti: bf16 only emulated
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", cuda) == (
        "bf16",
        "train.precision auto: bf16 (cuda has native bf16: CUDA compute capability 8.6)",
    )


def test_auto_trains_in_bf16_records_it_and_resumes_bit_identically(
    data_dir: Path,  # noqa: F811 - the fixture
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu_has(monkeypatch, amx=True, avx512_bf16=False)
    cfg = tiny_config(data_dir, "train.epochs=2", "train.precision=auto")
    train(cfg, tmp_path / "straight")
    saved = yaml.safe_load((tmp_path / "straight/config.yaml").read_text())
    assert saved["train"]["precision"] == "bf16"  # what was trained, not what was asked
    header = (tmp_path / "straight/train.log").read_text().splitlines()[0]
    assert header.endswith("precision bf16 (train.precision auto: bf16 (cpu has native bf16: AMX))")
    # the same auto config resumes (it resolves to the checkpoint's bf16) and ends where the straight
    # run ended, bit for bit
    train(cfg, tmp_path / "resumed", stop_after_epoch=1)
    train(cfg, tmp_path / "resumed", resume=True)
    a, b = (load_checkpoint(tmp_path / f"{run}/models/last.pt") for run in ("straight", "resumed"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    # fp32 differs: the run really was in bf16
    train(tiny_config(data_dir, "train.epochs=2", "train.precision=fp32"), tmp_path / "fp32")
    c = load_checkpoint(tmp_path / "fp32/models/last.pt")
    assert any(not torch.equal(a["model"][k], c["model"][k]) for k in a["model"])
    # on a CPU without native bf16 the same config resolves to fp32, which the bf16 checkpoint refuses
    cpu_has(monkeypatch, amx=False, avx512_bf16=False)
    with pytest.raises(MemsvError, match="config differs .* in train.precision"):
        train(cfg, tmp_path / "resumed", resume=True)


def test_fp16_on_cpu_is_one_line(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    with pytest.raises(MemsvError, match="fp16 needs CUDA; on CPU use bf16, fp32 or auto"):
        train(tiny_config(data_dir, "train.epochs=1", "train.precision=fp16"), tmp_path / "exp")


def test_auto_on_an_older_torch_without_the_emulation_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    def old_probe() -> bool:  # torch < 2.4: no including_emulation
        return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", old_probe)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert resolve_precision("auto", torch.device("cuda", 0))[0] == "bf16"


def test_the_memory_plan_gives_a_card_with_only_emulated_bf16_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    from memsv_cli.profile.plan import half_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    # torch >= 2.4: a 2080Ti "supports" bf16 by emulation, but not natively
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert half_precision("cuda") == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert half_precision("cuda") == "bf16"
    assert half_precision("cpu") == "bf16"
