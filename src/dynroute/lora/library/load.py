"""Load a library of adapters onto one base; switch its router; save and reload it."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynroute.common.registry import takes
from dynroute.lora.apply import write_adapter_folder
from dynroute.lora.library.arrow import top_right_singular_vector
from dynroute.lora.library.folders import (
    AdapterWeights,
    check_base_linear,
    read_adapter,
    write_peft_adapter,
)
from dynroute.lora.library.layer import LibraryLinear, library_layers
from dynroute.lora.library.routers import LIBRARY_ROUTERS, LibraryRouter

__all__ = [
    "LIBRARY_CONFIG",
    "LIBRARY_FILE",
    "check_library",
    "export_peft_adapters",
    "load_adapter_library",
    "save_adapter_library",
    "set_library_router",
]

LIBRARY_CONFIG = "adapter_library.json"
LIBRARY_FILE = "adapter_library.safetensors"
RouterSpec = str | Mapping[str, Any] | LibraryRouter


def check_library(adapters: Sequence[AdapterWeights]) -> None:
    """Every adapter must adapt the same modules with the same rank (one stacked layer).

    Raises:
        ValueError: one line naming the first adapter that differs from the first one.

    Example:
        >>> q = {"q": (torch.zeros(2, 4), torch.zeros(4, 2), 1.0)}
        >>> a = AdapterWeights("a", Path("a"), 2, q)
        >>> b = AdapterWeights("b", Path("b"), 4, {"q": (torch.zeros(4, 4),) * 2 + (1.0,)})
        >>> check_library([a, b])
        Traceback (most recent call last):
        ValueError: adapter b (b) has rank 4, adapter a has rank 2; a library needs one rank
    """
    if not adapters:
        raise ValueError("an adapter library needs at least one adapter folder")
    ref = adapters[0]
    for other in adapters[1:]:
        if sorted(other.modules) != sorted(ref.modules):
            raise ValueError(
                f"adapter {other.name} ({other.folder}) targets modules {sorted(other.modules)}, "
                f"adapter {ref.name} targets {sorted(ref.modules)}; a library needs the same "
                "modules in every adapter"
            )
        if other.rank != ref.rank:
            raise ValueError(
                f"adapter {other.name} ({other.folder}) has rank {other.rank}, adapter "
                f"{ref.name} has rank {ref.rank}; a library needs one rank"
            )
    names = [a.name for a in adapters]
    if len(set(names)) != len(names):
        raise ValueError(f"adapter names repeat: {names}; pass names=[...] to tell them apart")


def _build_router(router: RouterSpec, top_k: int | None, **kwargs: Any) -> LibraryRouter:
    if isinstance(router, LibraryRouter):
        return router
    cls, params = LIBRARY_ROUTERS.split(router, **kwargs)
    if top_k is not None and takes(cls, "top_k") and "top_k" not in params:
        params["top_k"] = top_k
    return cls(**params)  # type: ignore[no-any-return]


def set_library_router(
    model: nn.Module, router: RouterSpec, top_k: int | None = None, **router_kwargs: Any
) -> nn.Module:
    """Route ``model``'s library with ``router`` from now on (every layer; checked first).

    Args:
        router: a library router name, ``"name:key=value"``, dict or instance;
        top_k: given to routers that take one unless the spec sets it.

    Example:
        >>> set_library_router(nn.Linear(2, 2), "arrow")
        Traceback (most recent call last):
        ValueError: set_library_router: Linear has no adapter library (load_adapter_library)
    """
    layers = library_layers(model)
    if not layers:
        raise ValueError(
            f"set_library_router: {type(model).__name__} has no adapter library "
            "(load_adapter_library)"
        )
    route = _build_router(router, top_k, **router_kwargs)
    for layer in layers.values():
        route.check(layer)
    for layer in layers.values():
        layer.router = route
    config = getattr(model, "adapter_library_config", None)
    if isinstance(config, dict):
        config["router"] = route.to_dict()
    return model


def load_adapter_library(
    base_model: nn.Module,
    folders: Sequence[Path | str] | Path | str,
    router: RouterSpec | None = None,
    top_k: int | None = 2,
    names: Sequence[str] | None = None,
    prototype_seed: int = 0,
    **router_kwargs: Any,
) -> nn.Module:
    """Put a library of independently trained adapters on ``base_model``, routed per token.

    Args:
        base_model: the model every adapter was trained on (modified in place, frozen).
        folders: adapter folders (ours: ``save_lora_experts`` with one expert, or a
            ``dynroute lora train`` run; or peft LoRA folders), or one folder written by
            :func:`save_adapter_library`.
        router: a library router (``"arrow"``, the default; ``"phatgoose"``,
            ``"dynamic_k:top_p=0.8"``, ``"uniform"``, ``"oracle:adapter=NAME"``, yours; a saved
            library: its saved router); top_k: its k where it has one.
        names: the adapters' names (default: the folders' names).
        prototype_seed: the seed of Arrow's power iteration (peft's ``rng_seed``).

    Returns:
        ``base_model`` with each adapted linear a :class:`LibraryLinear`; its
        ``adapter_library_config`` records names, folders, modules, rank and router.

    Raises:
        ValueError: adapters of different modules or ranks (one line naming the adapter),
            modules the base lacks, an unknown router or one that cannot route this library.

    Example:
        >>> model = load_adapter_library(base, ["runs/python", "runs/docs"])  # doctest: +SKIP
    """
    if isinstance(folders, str | Path) and (Path(folders) / LIBRARY_CONFIG).is_file():
        return _load_saved(base_model, Path(folders), router, top_k, **router_kwargs)
    paths = [folders] if isinstance(folders, str | Path) else list(folders)
    if names is not None and len(names) != len(paths):
        raise ValueError(f"{len(names)} names for {len(paths)} adapter folders")
    adapters = [read_adapter(p, None if names is None else names[i]) for i, p in enumerate(paths)]
    check_library(adapters)
    _wrap(base_model, adapters, prototype_seed)
    base_model.adapter_library_config = {  # type: ignore[assignment]
        "names": [a.name for a in adapters],
        "folders": [str(a.folder) for a in adapters],
        "modules": sorted(adapters[0].modules),
        "rank": adapters[0].rank,
        "prototype_seed": prototype_seed,
        "router": None,
    }
    return set_library_router(base_model, router or "arrow", top_k, **router_kwargs)


def _wrap(model: nn.Module, adapters: list[AdapterWeights], seed: int) -> None:
    model.requires_grad_(False)
    for module in sorted(adapters[0].modules):
        base = check_base_linear(model, adapters[0], module)
        for other in adapters[1:]:
            check_base_linear(model, other, module)
        parts = [a.modules[module] for a in adapters]
        lora_a = torch.stack([p[0] for p in parts]).float()
        lora_b = torch.stack([p[1] for p in parts]).float()
        scales = torch.tensor([p[2] for p in parts])
        protos = torch.stack([top_right_singular_vector(p[0], p[1], seed) for p in parts])
        own = [a.gates.get(module) if a.gates is not None else None for a in adapters]
        trained = torch.tensor([g is not None for g in own])
        gates = torch.stack([g if g is not None else torch.zeros(base.in_features) for g in own])
        layer = LibraryLinear(base, lora_a, lora_b, scales, [a.name for a in adapters],
                              protos, gates.float(), gate_trained=trained)  # fmt: skip
        model.set_submodule(module, layer)


def save_adapter_library(model: nn.Module, folder: Path | str) -> Path:
    """Write the library (stacked adapters, prototypes, gates) and its config to ``folder``.

    ``load_adapter_library(base, folder)`` rebuilds the same model (same outputs).
    """
    layers = library_layers(model)
    config = getattr(model, "adapter_library_config", None)
    if not layers or config is None:
        raise ValueError("save_adapter_library: the model has no adapter library")
    return write_adapter_folder(folder, layers, LIBRARY_FILE, LIBRARY_CONFIG, config)


def _load_saved(
    model: nn.Module, folder: Path, router: RouterSpec | None, top_k: int | None, **kwargs: Any
) -> nn.Module:
    from safetensors.torch import load_file

    config = json.loads((folder / LIBRARY_CONFIG).read_text(encoding="utf-8"))
    tensors = load_file(str(folder / LIBRARY_FILE))
    names, rank = config["names"], int(config["rank"])
    model.requires_grad_(False)
    for module in config["modules"]:
        base = model.get_submodule(module) if _has(model, module) else None
        if not isinstance(base, nn.Linear):
            raise ValueError(
                f"{folder}: the library adapts {module}, which this base model "
                f"({type(model).__name__}) has no nn.Linear at; pass the library's base"
            )
        a = tensors[f"{module}.experts.A"].transpose(1, 2)
        b = tensors[f"{module}.experts.B"].transpose(1, 2)
        protos, gates = tensors[f"{module}.prototypes"], tensors[f"{module}.gates"]
        layer = LibraryLinear(base, a, b, torch.ones(len(names)), names, protos, gates,  # type: ignore[arg-type]
                              gate_trained=tensors[f"{module}.gate_trained"])  # fmt: skip
        if layer.experts.rank != rank:
            raise ValueError(f"{folder}: {module} has rank {layer.experts.rank}, config {rank}")
        model.set_submodule(module, layer)
    model.adapter_library_config = dict(config)  # type: ignore[assignment]
    if router is None:  # the saved router, exactly as saved
        return set_library_router(model, config["router"])
    return set_library_router(model, router, top_k, **kwargs)


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def export_peft_adapters(model: nn.Module, folder: Path | str) -> list[Path]:
    """Each adapter of ``model``'s library as a peft LoRA folder ``folder/<name>``.

    What peft's ``create_arrow_model`` and ``load_adapter_library`` both read: the
    benchmark and the exactness test give the two the very same files.
    """
    layers = library_layers(model)
    if not layers:
        raise ValueError("export_peft_adapters: the model has no adapter library")
    first = next(iter(layers.values()))
    out = []
    for e, name in enumerate(first.adapter_names):
        modules = {
            m: (layer.experts.A[e].t(), layer.experts.B[e].t(), 1.0) for m, layer in layers.items()
        }
        out.append(write_peft_adapter(Path(folder) / name, modules, first.experts.rank))
    return out
