"""ecsnap for the Hugging Face `Trainer`: snapshots every N steps, resumed bit for bit.

    from ecsnap.integrations.huggingface import EcsnapTrainer

    trainer = EcsnapTrainer(model=model, args=args, train_dataset=data, snapshot_every=1)
    trainer.train()             # resumes from the SMPs' memory when they hold the job

`EcsnapTrainer` is `Trainer` with `EcsnapTrainerMixin` (mix it into a Trainer subclass of yours
the same way: `class MyTrainer(EcsnapTrainerMixin, SFTTrainer)`). Saving: a callback snapshots,
after every `snapshot_every` optimizer steps, the model, the optimizer (fenced: the copy runs in
the background and the next `optimizer.step()` waits for it), the scheduler, the gradient scaler,
the RNGs and the Trainer's own state (global step, epoch, log history, stateful callbacks), at
the point the Trainer's own checkpoint would be taken (after the step's log entry and
evaluation). Restoring:
`train()` first asks the SMPs; when they hold the job, it resumes the way the Trainer resumes
from a checkpoint directory, with the state taken from memory instead of files, so the Trainer
itself counts the data position (it skips the batches of the epoch already trained) and sets the
RNGs where it sets them (after the resumed epoch's first batch is fetched). At the end of a
complete `train()` the Snapshotter is closed with `finished=True`.

This module needs `transformers` (`pip install 'ecsnap[huggingface]'`); ecsnap's core never
imports it. It overrides the Trainer's checkpoint-loading methods (`_load_from_checkpoint`,
`_load_optimizer_and_scheduler`, `_load_scaler`, `_load_rng_state`), which exist in
transformers 5.x.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState

from ecsnap.integrations.held import Held
from ecsnap.rng import RNGState
from ecsnap.snapshotter import Snapshotter

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"  # what Trainer reads from a checkpoint directory


def _trainer_state_json(trainer: Trainer) -> str:
    """The Trainer's state as its checkpoints write it (stateful callbacks brought up to date)."""
    state = copy.deepcopy(trainer.state)
    callbacks: Any = state.stateful_callbacks  # a dict once the state is built (name -> state)
    for cb in [*trainer.callback_handler.callbacks, trainer.control]:
        if isinstance(cb, ExportableState):
            name = cb.__class__.__name__
            if isinstance(callbacks.get(name), list):
                callbacks[name].append(cb.state())
            else:
                callbacks[name] = cb.state()
    return json.dumps(dataclasses.asdict(state), indent=2, sort_keys=True) + "\n"


class EcsnapCallback(TrainerCallback):
    """Snapshots the Trainer's whole training state every `every` optimizer steps (the last step
    always, and waited for); closes the Snapshotter (finished) when training completes."""

    def __init__(self, trainer: Trainer, snapshotter: Snapshotter, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"snapshot_every must be >= 1, got {every}")
        self.trainer, self.snap, self.every = trainer, snapshotter, every
        self._due = ""  # the event after which this step's save is taken

    def app_state(self) -> dict[str, Any]:
        t = self.trainer
        state: dict[str, Any] = {
            "model": t.model,
            "optim": t.optimizer,
            "sched": t.lr_scheduler,
            "rng": RNGState(),
            "trainer_state": _trainer_state_json(t),
        }
        if t.accelerator.scaler is not None:
            state["scaler"] = t.accelerator.scaler
        return state

    def _save(self, state: TrainerState) -> None:
        last = state.global_step >= state.max_steps
        self.snap.save(state.global_step, self.app_state(), on_busy="wait" if last else None)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if state.global_step % self.every and state.global_step < state.max_steps:
            return
        # Where the Trainer's own checkpoint would be taken: after this step's log entry (it
        # belongs in the saved log history) and evaluation (whose data loader draws from the
        # RNGs).
        if control.should_evaluate:
            self._due = "evaluate"
        elif control.should_log:
            self._due = "log"
        else:
            self._save(state)

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._save_after("log", state)

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._save_after("evaluate", state)

    def _save_after(self, event: str, state: TrainerState) -> None:
        """The step's save, if it waited for `event`."""
        if self._due == event:
            self._due = ""
            self._save(state)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.snap.close(finished=state.global_step >= state.max_steps)


class EcsnapTrainerMixin:
    """Mix into a `transformers.Trainer` (first in the bases): snapshots through ecsnap, and
    `train()` resumes from the SMPs' memory. Keyword arguments: `snapshotter` (default
    `ecsnap.Snapshotter()`, made at the first train()), `snapshot_every` (default 1)."""

    def __init__(
        self,
        *args: Any,
        snapshotter: Snapshotter | None = None,
        snapshot_every: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._ecsnap = snapshotter
        self._ecsnap_every = snapshot_every
        self._ecsnap_held: dict[str, Held] = {}
        self._ecsnap_dir: Path | None = None

    @property
    def snapshotter(self) -> Snapshotter:
        if self._ecsnap is None:
            self._ecsnap = Snapshotter()
        return self._ecsnap

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        trainer: Any = self
        snap = self.snapshotter
        trainer.add_callback(EcsnapCallback(trainer, snap, self._ecsnap_every))
        if not resume_from_checkpoint:
            resume_from_checkpoint = self._ecsnap_restore(snap)
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)  # type: ignore[misc]
        finally:
            trainer.remove_callback(EcsnapCallback)
            if self._ecsnap_dir is not None:
                shutil.rmtree(self._ecsnap_dir, ignore_errors=True)
            self._ecsnap_dir, self._ecsnap_held = None, {}

    def _ecsnap_restore(self, snap: Snapshotter) -> str | None:
        """Collective: the model in place, the rest held until the Trainer asks for it; the
        Trainer's state as a checkpoint directory of one file. None when nothing is held."""
        trainer: Any = self
        held = {k: Held() for k in ("optim", "sched", "scaler", "rng")}
        app_state: dict[str, Any] = {"model": trainer.model, **held, "trainer_state": ""}
        step = snap.restore(app_state)
        if step is None:
            return None
        self._ecsnap_held = held
        self._ecsnap_dir = Path(tempfile.mkdtemp(prefix="ecsnap-hf-"))
        (self._ecsnap_dir / STATE_FILE).write_text(app_state["trainer_state"])
        logger.warning("resuming the Trainer at global step %d from ecsnap's snapshot", step)
        return str(self._ecsnap_dir)

    def _ours(self, checkpoint: str | None) -> bool:
        return (
            checkpoint is not None
            and self._ecsnap_dir is not None
            and (Path(checkpoint) == self._ecsnap_dir)
        )

    # The Trainer's resume hooks: for our checkpoint, the state restore() took from memory.

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        if not self._ours(resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)  # type: ignore[misc]
        # ours: the model was restored in place by restore()

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if not self._ours(checkpoint):
            super()._load_optimizer_and_scheduler(checkpoint)  # type: ignore[misc]
            return
        trainer: Any = self
        trainer.optimizer.load_state_dict(self._ecsnap_held["optim"].take())
        trainer.lr_scheduler.load_state_dict(self._ecsnap_held["sched"].take())

    def _load_scaler(self, checkpoint: str | None) -> None:
        if not self._ours(checkpoint):
            super()._load_scaler(checkpoint)  # type: ignore[misc]
            return
        trainer: Any = self
        scaler = self._ecsnap_held["scaler"]
        if trainer.accelerator.scaler is not None and scaler.value is not None:
            trainer.accelerator.scaler.load_state_dict(scaler.take())

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if not self._ours(checkpoint):
            super()._load_rng_state(checkpoint)  # type: ignore[misc]
            return
        RNGState().load_state_dict(self._ecsnap_held["rng"].take())


class EcsnapTrainer(EcsnapTrainerMixin, Trainer):  # type: ignore[misc]
    """`transformers.Trainer` snapshotting through ecsnap (see `EcsnapTrainerMixin`)."""
