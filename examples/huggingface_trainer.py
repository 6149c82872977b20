"""The Hugging Face Trainer with ecsnap: a 2-layer GPT-2 (dropout on) trained for a few epochs
on synthetic tokens, snapshotted every step. Kill it at any step and run it again: `train()`
resumes from the SMP's memory and ends bit for bit like a run that was never killed.

    smp launch --standalone --nproc-per-node 1 examples/huggingface_trainer.py --out /tmp/hf

Writes rank<R>.losses.jsonl (the Trainer's logged losses) and rank<R>.final.pt (model and
optimizer) in --out, the files ecsnap.testing compares.
"""

import argparse
import json
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

from ecsnap.integrations.huggingface import EcsnapTrainer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=24)
    args = p.parse_args()
    out = Path(args.out)

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    tokens = torch.randint(0, 64, (32, 16))
    data = [{"input_ids": t, "labels": t} for t in tokens]  # 8 steps an epoch
    training = TrainingArguments(
        output_dir=str(out / "trainer"),
        max_steps=args.steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        warmup_steps=4,
        logging_steps=1,
        save_strategy="no",  # ecsnap snapshots instead of checkpoint directories
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = EcsnapTrainer(model=model, args=training, train_dataset=data, snapshot_every=1)
    trainer.train()  # resumes from the SMP's memory if it holds this job

    rank = training.process_index
    with (out / f"rank{rank}.losses.jsonl").open("w") as f:
        for entry in trainer.state.log_history:
            if "loss" in entry:
                f.write(json.dumps({"step": entry["step"], "loss": float(entry["loss"]).hex()}))
                f.write("\n")
    final = {"model": model.state_dict(), "optim": trainer.optimizer.state_dict()}
    torch.save(final, out / f"rank{rank}.final.pt")


if __name__ == "__main__":
    main()
