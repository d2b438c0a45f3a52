"""Route among a library of independently trained adapters: Arrow, PHATGOOSE, dynamic-k.

Adapters trained separately (ours, or peft LoRA folders, for the same base) are stacked
into one :class:`LibraryLinear` per adapted linear; a library router chosen by name
(:data:`LIBRARY_ROUTERS`: ``arrow``, ``phatgoose``, ``dynamic_k``, ``uniform``, ``oracle``,
yours) picks adapters per token, and only those run (the grouped dispatch).
See ``docs/lora.md`` ("Library").

Example:
    >>> model = load_adapter_library(base, ["runs/lib/adapters/python", "peft/docs"],
    ...                              router="arrow", top_k=2)   # doctest: +SKIP
    >>> set_library_router(model, "dynamic_k:scores=arrow,top_p=0.9")  # doctest: +SKIP
"""

from dynroute.lora.library.arrow import top_right_singular_vector
from dynroute.lora.library.folders import AdapterWeights, read_adapter, write_peft_adapter
from dynroute.lora.library.gates import train_phatgoose_gates
from dynroute.lora.library.layer import LibraryLinear, library_layers
from dynroute.lora.library.load import (
    check_library,
    export_peft_adapters,
    load_adapter_library,
    save_adapter_library,
    set_library_router,
)
from dynroute.lora.library.routers import LIBRARY_ROUTERS, LibraryRouter, register_library_router

__all__ = [
    "LIBRARY_ROUTERS",
    "AdapterWeights",
    "LibraryLinear",
    "LibraryRouter",
    "check_library",
    "export_peft_adapters",
    "library_layers",
    "load_adapter_library",
    "read_adapter",
    "register_library_router",
    "save_adapter_library",
    "set_library_router",
    "top_right_singular_vector",
    "train_phatgoose_gates",
    "write_peft_adapter",
]
