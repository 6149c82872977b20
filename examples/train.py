"""ecsnap's quickstart, runnable: a small model with dropout, AdamW, a learning-rate schedule and
torchdata's StatefulDataLoader (shuffled, several epochs), snapshotted every step. One process,
or many under torchrun (DDP over gloo):

    smp launch --standalone --nproc-per-node 4 --max-restarts 3 examples/train.py --out /tmp/run

Kill it at any step and run the same command again: it resumes from the SMP's memory and ends
bit for bit like a run that was never killed. Writes rank<R>.losses.jsonl (step, loss) and, at
the end, rank<R>.final.pt (model and optimizer) in --out, the files ecsnap.testing compares.
"""

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

import ecsnap


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0

    torch.manual_seed(0)  # the same initial model on every rank
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 1))
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model)
        ecsnap.settle_ddp(net, torch.zeros(1, 16))  # DDP's final buckets before the first step
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(optim, step_size=10, gamma=0.5)
    torch.manual_seed(1 + rank)  # each rank its own data, order and dropout
    x = torch.randn(96, 16)
    data = TensorDataset(x, x.sum(1, keepdim=True).sin())
    loader = StatefulDataLoader(data, batch_size=8, shuffle=True)  # 12 steps an epoch

    app_state = {"model": model, "optim": optim, "sched": sched, "data": loader,
                 "rng": ecsnap.RNGState()}  # fmt: skip
    snap = ecsnap.Snapshotter()
    restored = snap.restore(app_state)  # the loader's position and the RNGs come back too
    step = 0 if restored is None else restored + 1
    with (out / f"rank{rank}.losses.jsonl").open("a") as losses:
        while step < args.steps:
            for xb, yb in loader:  # resumed mid-epoch, this goes on where the snapshot was
                loss = nn.functional.mse_loss(net(xb), yb)
                optim.zero_grad()
                loss.backward()
                optim.step()
                sched.step()
                losses.write(json.dumps({"step": step, "loss": loss.item().hex()}) + "\n")
                losses.flush()
                last = step == args.steps - 1
                snap.save(step, app_state, on_busy="wait" if last else "skip")
                step += 1
                if last:
                    break
    snap.close(finished=True)  # the job is done: a relaunch of it is refused, not a no-op
    final = {"model": model.state_dict(), "optim": optim.state_dict()}
    torch.save(final, out / f"rank{rank}.final.pt")
    if world > 1:
        del net  # DDP first: a process group left to DDP's reducer at exit can deadlock in gloo
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
