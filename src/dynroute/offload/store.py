"""Where offloaded experts live: host memory, or safetensors files on disk read on demand.

A store holds, per key ``(layer, expert)``, a few named tensors (the expert's weights) and
copies them into a slot's tensors on request (``read_into``), from any thread.

:class:`DiskStore` writes one safetensors file per MoE layer (``layer_000.safetensors``,
tensor ``"{expert}.{name}"``) with ``safetensors.torch.save_file`` and reads an expert's
bytes with ``os.pread`` straight into the slot, at the offsets of the file's header (the
safetensors format: an 8-byte header length, a JSON header, the data). Not ``safe_open``:
it memory-maps the file, and the kernel does not drop mapped pages from its page cache,
so a "cold" store would stay warm. With ``cold=True`` every read is followed by
``posix_fadvise(DONTNEED)`` on its range, so the next miss of that expert reads the disk
again; :func:`drop_page_cache` empties the cache of a whole store before a run.

Example:
    >>> import torch, tempfile
    >>> experts = {(0, 1): {"w": torch.arange(4.0)}}
    >>> store = DiskStore.write(tempfile.mkdtemp(), experts)
    >>> slot = {"w": torch.empty(4)}
    >>> store.read_into((0, 1), slot), slot["w"].tolist()
    (16, [0.0, 1.0, 2.0, 3.0])
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from dynroute.offload.policies import Key

__all__ = ["DiskStore", "ExpertStore", "HostStore", "drop_page_cache"]

ExpertTensors = Mapping[str, Tensor]


class ExpertStore:
    """Base: ``read_into(key, slot) -> bytes moved``; ``nbytes(key)``."""

    def read_into(self, key: Key, slot: Mapping[str, Tensor]) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Release files (a store without files: nothing)."""


class HostStore(ExpertStore):
    """Experts kept in host memory (on a GPU machine: pinned CPU tensors)."""

    def __init__(self, experts: Mapping[Key, ExpertTensors], pin: bool = False) -> None:
        self.experts = {
            k: {n: (t.pin_memory() if pin else t).contiguous() for n, t in v.items()}
            for k, v in experts.items()
        }

    def read_into(self, key: Key, slot: Mapping[str, Tensor]) -> int:
        moved = 0
        for name, src in self.experts[key].items():
            slot[name].copy_(src, non_blocking=False)
            moved += src.numel() * src.element_size()
        return moved


def layer_file(folder: Path, layer: int) -> Path:
    """The safetensors file of one MoE layer in a store folder."""
    return folder / f"layer_{layer:03d}.safetensors"


class DiskStore(ExpertStore):
    """Experts in safetensors files (one per layer), read with ``pread`` on demand.

    Args:
        folder: a folder :meth:`write` filled.
        cold: drop each range from the OS page cache after reading it (a real disk read
            on every miss; see the module's docstring).
    """

    def __init__(self, folder: str | Path, cold: bool = False) -> None:
        self.folder, self.cold = Path(folder), cold
        self.index: dict[Key, dict[str, tuple[int, int, int]]] = {}  # name -> (fd, start, end)
        self.fds: list[int] = []
        for path in sorted(self.folder.glob("layer_*.safetensors")):
            layer = int(path.stem.split("_")[1])
            fd = os.open(path, os.O_RDONLY)
            self.fds.append(fd)
            with path.open("rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
            for tensor, meta in header.items():
                if tensor == "__metadata__":
                    continue
                expert, name = tensor.split(".", 1)
                begin, end = meta["data_offsets"]
                self.index.setdefault((layer, int(expert)), {})[name] = (
                    fd,
                    8 + size + begin,
                    8 + size + end,
                )
        if not self.index:
            raise FileNotFoundError(f"{self.folder}: no layer_*.safetensors expert files")

    @classmethod
    def write(
        cls, folder: str | Path, experts: Mapping[Key, ExpertTensors], cold: bool = False
    ) -> DiskStore:
        """Write ``experts`` under ``folder`` (one file per layer) and open it."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for layer in sorted({k[0] for k in experts}):
            tensors = {
                f"{e}.{name}": t.detach().contiguous().cpu()
                for (lay, e), named in experts.items()
                if lay == layer
                for name, t in named.items()
            }
            save_file(tensors, str(layer_file(folder, layer)))
        return cls(folder, cold=cold)

    def read_into(self, key: Key, slot: Mapping[str, Tensor]) -> int:
        moved = 0
        for name, (fd, start, end) in self.index[key].items():
            dst = slot[name]
            if dst.device.type != "cpu" or not dst.is_contiguous():
                staging = torch.empty(dst.shape, dtype=dst.dtype)
                self.pread_into(fd, start, end, staging)
                dst.copy_(staging)
            else:
                self.pread_into(fd, start, end, dst)
            moved += end - start
        return moved

    def pread_into(self, fd: int, start: int, end: int, dst: Tensor) -> None:
        view = memoryview(dst.view(-1).view(torch.uint8).numpy())
        if view.nbytes != end - start:
            raise ValueError(
                f"{self.folder}: stored expert has {end - start} bytes, slot {view.nbytes}"
            )
        done = 0
        while done < view.nbytes:
            done += os.preadv(fd, [view[done:]], start + done)
        if self.cold:
            os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def drop_page_cache(folder: str | Path) -> int:
    """Ask the kernel to drop every store file of ``folder`` from its page cache
    (``posix_fadvise(DONTNEED)`` after ``fsync``); returns the files touched."""
    files = sorted(Path(folder).glob("layer_*.safetensors"))
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return len(files)
