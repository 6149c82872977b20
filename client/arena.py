"""Trainer-side mapping of an SMP arena file as a torch uint8 tensor.

Mappings are cached per slot and re-validated at every save (path, size and inode), because the
SMP replaces an arena file when a snapshot outgrows it: a stale mapping would silently write to
memory nobody reads. For CUDA copies the mapping is page-locked with cudaHostRegister once, so
device-to-host copies run as DMA on a side stream.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import threading

import torch

logger = logging.getLogger(__name__)


class MappedArena:
    """`populate`: map every page now (MAP_POPULATE). Right for the slots a trainer writes again
    and again (a write faults one page at a time); a one-off reader (restore, export) maps lazily:
    a read fault maps a whole run of pages at once (the kernel's fault-around), so copying 256 MiB
    out of a lazy mapping costs ~5 ms more than out of a populated one, where populating costs
    ~17 ms (measured here)."""

    def __init__(self, path: str, capacity: int, *, populate: bool = True) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if st.st_size < capacity:
                raise ValueError(f"arena {path} is {st.st_size} bytes, expected {capacity}")
            # MAP_POPULATE maps every (already allocated) page now instead of faulting per page.
            flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
            self._map = mmap.mmap(fd, capacity, flags, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.path = path
        self.capacity = capacity
        self.inode = st.st_ino
        self.tensor = torch.frombuffer(self._map, dtype=torch.uint8)
        self._registered = False

    def still_valid(self, path: str, capacity: int) -> bool:
        if path != self.path or capacity != self.capacity:
            return False
        try:
            return os.stat(path).st_ino == self.inode
        except FileNotFoundError:
            return False

    def register_with_cuda(self) -> bool:
        """Page-lock the mapping for async device copies; False if CUDA refuses."""
        if self._registered:
            return True
        cudart = torch.cuda.cudart()
        err = cudart.cudaHostRegister(self.tensor.data_ptr(), self.capacity, 0)
        if int(err) != 0:
            logger.warning(
                "cudaHostRegister of %s failed (%s): device copies will be synchronous",
                self.path,
                err,
            )
            return False
        self._registered = True
        return True

    def close(self, *, background: bool = False) -> None:
        """Unmap. `background`: on a thread of its own (munmap releases the GIL), for a reader on
        the critical path: unmapping 256 MiB takes ~8 ms (measured here)."""
        if self._registered:
            torch.cuda.cudart().cudaHostUnregister(self.tensor.data_ptr())
            self._registered = False
        del self.tensor
        if background:
            threading.Thread(target=_unmap, args=(self._map,), name="ecsnap-unmap").start()
        else:
            _unmap(self._map)


def _unmap(mapping: mmap.mmap) -> None:
    # A view handed out at restore may still be alive; the GC closes the map later then.
    with contextlib.suppress(BufferError):
        mapping.close()
