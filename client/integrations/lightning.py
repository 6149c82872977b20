"""ecsnap for Lightning: a callback that snapshots the Trainer's checkpoint every N steps on every
rank, in the background, and resumes from the SMPs' memory bit for bit.

    from ecsnap.integrations.lightning import EcsnapCheckpoint

    trainer = L.Trainer(max_steps=1000, callbacks=[EcsnapCheckpoint(every_n_train_steps=1)])
    trainer.fit(model, train_dataloaders=StatefulDataLoader(...))   # resumes when the SMPs
                                                                    # hold the job

What is saved is Lightning's own checkpoint (the dict `trainer.save_checkpoint` writes: weights,
optimizers, schedulers, loops with the data loaders' positions, callbacks, precision plugin,
hyperparameters) plus the RNGs, which Lightning's checkpoints leave out. It is handed to the
Snapshotter with the live LightningModule and optimizers beside it, so the tensors the optimizer
changes are copied in the background (fenced: the next `optimizer.step()` waits for the copy), as
with the plain API; a CheckpointIO plugin would get the dict alone, and only on rank 0.

Restoring happens in `setup()` (the process group is up; the model is not yet on its device):
every rank agrees on the step and the checkpoint is loaded by Lightning itself, exactly as from
`fit(ckpt_path=...)`. The RNGs are set in `on_train_start`, after the training data loaders'
iterators are created in their restored positions (a new iterator draws from the RNG): a resumed
run draws the same dropout masks as one never stopped. Mid-epoch resumption needs a stateful
loader (torchdata's StatefulDataLoader), as with Lightning's own checkpoints.

Needs `lightning` (`pip install 'ecsnap[lightning]'`); ecsnap's core never imports it. It reads
and fills the Trainer's checkpoint connector (`dump_checkpoint`, `_loaded_checkpoint`) of
Lightning 2.x.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from ecsnap.integrations.held import Held
from ecsnap.loader import instances_in
from ecsnap.rng import RNGState
from ecsnap.snapshotter import Snapshotter

logger = logging.getLogger(__name__)


class _Checkpoint:
    """Lightning's checkpoint dict as a Stateful, with the objects whose tensors it holds as
    attributes (ecsnap finds the modules and optimizers there and fences them)."""

    def __init__(self, checkpoint: dict[str, Any], module: Any, optimizers: list[Any]) -> None:
        self.checkpoint, self.module, self.optimizers = checkpoint, module, optimizers

    def state_dict(self) -> dict[str, Any]:
        return self.checkpoint

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.checkpoint = state


def _version() -> str:
    return str(getattr(pl, "__version__", "unknown version"))


def _connector(trainer: pl.Trainer) -> Any:
    connector = getattr(trainer, "_checkpoint_connector", None)
    if connector is None or not hasattr(connector, "dump_checkpoint"):
        raise RuntimeError(
            f"ecsnap's Lightning callback does not know this Lightning ({_version()}): its "
            "Trainer has no checkpoint connector; use Lightning 2.x"
        )
    return connector


class EcsnapCheckpoint(pl.Callback):
    """Snapshot every `every_n_train_steps` optimizer steps; resume in `fit()` when the SMPs hold
    the job. `snapshotter`: default `ecsnap.Snapshotter()` (made at setup). At the end of a fit
    that was not interrupted, the last step is saved (waited for) and the job marked finished."""

    def __init__(
        self, every_n_train_steps: int = 1, snapshotter: Snapshotter | None = None
    ) -> None:
        if every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1, got {every_n_train_steps}")
        self.every = every_n_train_steps
        self._snap = snapshotter
        self._rng: Held | None = None
        self._last: int | None = None  # newest step saved (not skipped)

    @property
    def snapshotter(self) -> Snapshotter:
        if self._snap is None:
            self._snap = Snapshotter()
        return self._snap

    # -- restore ----------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        connector = _connector(trainer)
        held = {"lightning": Held(), "rng": Held()}
        step = self.snapshotter.restore(held)
        if step is None:
            return
        # Lightning loads it right after setup() as if from fit(ckpt_path=...): weights,
        # callbacks and datamodule now, optimizers, schedulers and loops once they exist.
        connector._loaded_checkpoint = held["lightning"].take()
        self._rng, self._last = held["rng"], step
        logger.warning("resuming at global step %d from ecsnap's snapshot", step)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._rng is None:
            return
        for loader in instances_in(trainer.train_dataloader, DataLoader):
            if hasattr(loader, "state_dict"):
                loader.state_dict()  # its iterator exists (restored position) before the RNGs
        RNGState().load_state_dict(self._rng.take())
        self._rng = None

    # -- save -------------------------------------------------------------------------------------

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, wait: bool) -> None:
        step = trainer.global_step
        checkpoint = _connector(trainer).dump_checkpoint(weights_only=False)
        state = {
            "lightning": _Checkpoint(checkpoint, pl_module, list(trainer.optimizers)),
            "rng": RNGState(),
        }
        handle = self.snapshotter.save(step, state, on_busy="wait" if wait else None)
        if not handle.skipped:
            self._last = step

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if step % self.every == 0 and (self._last is None or step > self._last):
            self._save(trainer, pl_module, wait=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.interrupted:
            self.snapshotter.close()
            return
        if self._last != trainer.global_step:
            self._save(trainer, pl_module, wait=True)
        self.snapshotter.close(finished=True)
