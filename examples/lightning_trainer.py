"""Lightning with ecsnap: a small model with dropout, AdamW and a schedule, trained for a few
epochs from torchdata's StatefulDataLoader (so a resume mid-epoch continues where it was),
snapshotted every step. Kill it at any step and run it again: `fit()` resumes from the SMP's
memory and ends bit for bit like a run that was never killed.

    smp launch --standalone --nproc-per-node 1 examples/lightning_trainer.py --out /tmp/pl

Writes rank<R>.losses.jsonl (every step's loss) and rank<R>.final.pt (model and optimizer) in
--out, the files ecsnap.testing compares.
"""

import argparse
import json
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from ecsnap.integrations.lightning import EcsnapCheckpoint


class Regression(pl.LightningModule):
    def __init__(self, losses: str) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 1))
        self.losses = losses

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        with open(self.losses, "a") as f:
            f.write(json.dumps({"step": self.global_step, "loss": loss.item().hex()}) + "\n")
        return loss

    def configure_optimizers(self) -> dict:
        optim = torch.optim.AdamW(self.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.StepLR(optim, step_size=10, gamma=0.5)
        return {"optimizer": optim, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    pl.seed_everything(0)
    model = Regression(str(out / "rank0.losses.jsonl"))
    x = torch.randn(96, 16)
    loader = StatefulDataLoader(TensorDataset(x, x.sum(1, keepdim=True).sin()), batch_size=8,
                                shuffle=True)  # fmt: skip
    trainer = pl.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        devices=1,
        callbacks=[EcsnapCheckpoint(every_n_train_steps=1)],
        enable_checkpointing=False,  # ecsnap snapshots instead of checkpoint files
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    trainer.fit(model, train_dataloaders=loader)  # resumes from the SMP's memory if it can
    final = {"model": model.state_dict(), "optim": trainer.optimizers[0].state_dict()}
    torch.save(final, out / f"rank{trainer.global_rank}.final.pt")


if __name__ == "__main__":
    main()
