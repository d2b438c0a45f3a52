"""Read one adapter from a folder: ours (``save_lora_experts``, E = 1) or a peft LoRA.

An adapter is, per adapted linear, peft's layout ``lora_A [r, d_in]``, ``lora_B [d_out, r]``
and a scale (``alpha / r``, or ``alpha / √r`` for rsLoRA), plus the PHATGOOSE gate vectors
when its contributor trained them (``phatgoose_gates.safetensors`` beside the adapter).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from dynroute.lora.apply import ADAPTER_FILE, CONFIG_FILE, read_lora_config
from dynroute.lora.train import ADAPTERS_DIR

__all__ = [
    "GATES_FILE",
    "PEFT_CONFIG",
    "AdapterWeights",
    "adapter_folder",
    "read_adapter",
    "write_peft_adapter",
]

GATES_FILE = "phatgoose_gates.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."


@dataclass
class AdapterWeights:
    """One adapter of a library.

    Attributes:
        name: its name (the folder's, or its run folder's for ``RUN/adapters``).
        folder: where it was read from.
        rank: r; modules: ``{module name: (lora_A [r, d_in], lora_B [d_out, r], scale)}``.
        gates: ``{module name: [d_in]}`` PHATGOOSE gates, or None.
    """

    name: str
    folder: Path
    rank: int
    modules: dict[str, tuple[Tensor, Tensor, float]]
    gates: dict[str, Tensor] | None = None


def adapter_folder(path: Path | str) -> Path:
    """The adapter folder of ``path``: itself, or ``path/adapters`` for a
    ``dynroute lora train`` run folder.

    Raises:
        FileNotFoundError: naming the folder and what an adapter folder holds.
    """
    path = Path(path)
    for folder in (path, path / ADAPTERS_DIR):
        if (folder / CONFIG_FILE).is_file() or (folder / PEFT_CONFIG).is_file():
            return folder
    raise FileNotFoundError(
        f"{path} is not an adapter folder: it has neither {CONFIG_FILE} (save_lora_experts, "
        f"the {ADAPTERS_DIR}/ of `dynroute lora train`) nor {PEFT_CONFIG} (a peft LoRA)"
    )


def _name(folder: Path) -> str:
    return folder.parent.name if folder.name == ADAPTERS_DIR else folder.name


def _read_gates(folder: Path) -> dict[str, Tensor] | None:
    from safetensors.torch import load_file

    path = folder / GATES_FILE
    return load_file(str(path)) if path.is_file() else None


def read_adapter(path: Path | str, name: str | None = None) -> AdapterWeights:
    """Read the adapter of ``path`` (see :func:`adapter_folder`).

    Raises:
        ValueError: a mixture of experts, SMoRA, DoRA or per-layer ranks (one line naming
            the folder); FileNotFoundError: not an adapter folder.
    """
    folder = adapter_folder(path)
    name = name or _name(folder)
    if (folder / CONFIG_FILE).is_file():
        adapter = _read_ours(folder, name)
    else:
        adapter = _read_peft(folder, name)
    adapter.gates = _read_gates(folder)
    return adapter


def _read_ours(folder: Path, name: str) -> AdapterWeights:
    from safetensors.torch import load_file

    config = read_lora_config(folder)
    if config.get("kind", "lora") != "lora" or int(config["num_experts"]) != 1:
        raise ValueError(
            f"adapter {name} ({folder}): {config['num_experts']} {config.get('kind', 'lora')} "
            "experts; a library holds single adapters (train with num_experts = 1)"
        )
    tensors = load_file(str(folder / ADAPTER_FILE))
    rank, scale = int(config["rank"]), float(config["alpha"]) / int(config["rank"])
    modules = {
        m: (tensors[f"{m}.experts.A"][0].t(), tensors[f"{m}.experts.B"][0].t(), scale)
        for m in config["modules"]
    }
    return AdapterWeights(name, folder, rank, modules)


def _read_peft(folder: Path, name: str) -> AdapterWeights:
    config = json.loads((folder / PEFT_CONFIG).read_text(encoding="utf-8"))
    where = f"adapter {name} ({folder})"
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{where}: peft_type {config.get('peft_type')}, not a LoRA")
    if config.get("use_dora") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError(f"{where}: DoRA or per-layer ranks/alphas; a library takes plain LoRAs")
    tensors = _peft_tensors(folder)
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    modules: dict[str, tuple[Tensor, Tensor, float]] = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")].removeprefix(PEFT_PREFIX)
            modules[module] = (a, tensors[key.replace(".lora_A.", ".lora_B.")], scale)
    if not modules:
        raise ValueError(f"{where}: no lora_A/lora_B weights in its adapter_model file")
    return AdapterWeights(name, folder, rank, modules)


def _peft_tensors(folder: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if (folder / "adapter_model.safetensors").is_file():
        return load_file(str(folder / "adapter_model.safetensors"))
    if (folder / "adapter_model.bin").is_file():
        return torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder}: no adapter_model.safetensors or adapter_model.bin")


def write_peft_adapter(
    folder: Path | str, modules: dict[str, tuple[Tensor, Tensor, float]], rank: int
) -> Path:
    """Write one adapter as a peft LoRA folder (``PeftModel.from_pretrained`` reads it).

    The scale is folded into ``lora_B`` and ``lora_alpha = r`` (peft's scaling 1), so
    adapters of different alphas become one plain LoRA each.
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    for module, (a, b, scale) in modules.items():
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a.detach().contiguous().cpu()
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = (b * scale).detach().contiguous().cpu()
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=sorted(modules),
                        lora_dropout=0.0)  # fmt: skip
    config.save_pretrained(str(folder))
    tmp = folder / ".adapter_model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / "adapter_model.safetensors")
    return folder


def check_base_linear(base_model: nn.Module, adapter: AdapterWeights, module: str) -> nn.Linear:
    """The base's ``module``, checked to be an ``nn.Linear`` of the adapter's shapes."""
    try:
        linear = base_model.get_submodule(module)
    except AttributeError:
        raise ValueError(
            f"adapter {adapter.name} ({adapter.folder}) targets {module}, which the base model "
            f"{type(base_model).__name__} does not have; was it trained on another base?"
        ) from None
    a, b, _ = adapter.modules[module]
    shape = (a.shape[1], b.shape[0])
    if not isinstance(linear, nn.Linear) or (linear.in_features, linear.out_features) != shape:
        raise ValueError(
            f"adapter {adapter.name} ({adapter.folder}): {module} is {a.shape[1]} -> "
            f"{b.shape[0]}, the base model's is {linear}; was it trained on another base?"
        )
    return linear
