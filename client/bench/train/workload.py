"""The benchmark's workload: a small decoder-only transformer, AdamW, deterministic synthetic data.

Every contender trains exactly this. The state a rank holds is the model's parameters plus AdamW's
two moments (3 x 4 bytes per parameter), the data position and the RNG states. `state_bytes`
pads it up to a requested size with a per-rank parameter (as a sharded optimizer's slice would be:
different on every rank, part of the optimizer and updated every step).

sharding "ddp": the model is replicated (DDP) and the padding is a plain per-rank parameter.
sharding "fsdp": FSDP2 (`fully_shard` on every block and on a root holding model and padding), so
every parameter and optimizer moment is a DTensor and each rank holds 1/world of them; the
padding is one sharded parameter of world x the per-rank size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    vocab: int = 8192
    d_model: int = 256
    layers: int = 4
    heads: int = 4
    seq: int = 128
    batch: int = 8
    state_bytes: int = 0  # per rank; 0 = just the model and its optimizer
    seed: int = 1234
    sharding: str = "ddp"  # or "fsdp"
    world: int = 1

    def local_params(self) -> int:
        """Model parameters this rank holds (all of them with DDP, 1/world with FSDP2)."""
        p = self.param_count()
        return -(-p // self.world) if self.sharding == "fsdp" else p

    def param_count(self) -> int:
        d, v = self.d_model, self.vocab
        block = 12 * d * d + 13 * d  # attention (4 d^2 + 4 d), MLP (8 d^2 + 5 d), 2 LayerNorms
        return v * d + self.seq * d + self.layers * block + 2 * d + d * v + v

    def shard_numel(self) -> int:
        """Elements of the per-rank padding parameter that brings the state to `state_bytes`."""
        per_param = 12  # fp32 value + AdamW exp_avg + exp_avg_sq
        # At least one element: every rank's state has the same structure at any size.
        return max(1, self.state_bytes // per_param - self.local_params())

    def total_state_bytes(self) -> int:
        return 12 * (self.local_params() + self.shard_numel())


class Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))
        out: torch.Tensor = x + self.drop(self.out(F.gelu(self.fc(self.ln2(x)))))
        return out


class TinyLM(nn.Module):
    def __init__(self, cfg: ModelConfig, dropout: float = 0.1) -> None:
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq, cfg.d_model)
        self.blocks = nn.ModuleList(
            Block(cfg.d_model, cfg.heads, dropout) for _ in range(cfg.layers)
        )
        self.ln = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok(idx) + self.pos(pos)
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.head(self.ln(x))
        return logits


class TokenStream:
    """Deterministic synthetic batches: a function of (seed, rank, position). Stateful."""

    def __init__(self, cfg: ModelConfig, rank: int, device: torch.device) -> None:
        self.cfg, self.rank, self.device = cfg, rank, device
        self.position = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        g = torch.Generator().manual_seed(c.seed * 1_000_003 + self.rank * 7919 + self.position)
        self.position += 1
        # A learnable pattern (each token predicts the next of an arithmetic run) plus noise.
        start = torch.randint(0, c.vocab, (c.batch, 1), generator=g)
        stride = torch.randint(1, 17, (c.batch, 1), generator=g)
        seq = (start + stride * torch.arange(c.seq + 1)) % c.vocab
        noise = torch.rand(seq.shape, generator=g) < 0.05
        seq = torch.where(noise, torch.randint(0, c.vocab, seq.shape, generator=g), seq)
        seq = seq.to(self.device)
        return seq[:, :-1], seq[:, 1:]

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])


class Holder(nn.Module):
    """Model and padding under one module (what DCP's get_state_dict walks; FSDP2's root)."""

    def __init__(self, model: TinyLM, shard: nn.Parameter) -> None:
        super().__init__()
        self.model = model
        self.shard = shard

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reg = self.shard.square().mean() if self.shard.numel() else self.shard.sum()
        return self.model(idx), reg


@dataclass
class Workload:
    cfg: ModelConfig
    model: TinyLM
    shard: nn.Parameter
    optim: torch.optim.AdamW
    data: TokenStream
    net: nn.Module  # what is trained: DDP(model), or the FSDP2-sharded holder
    holder: Holder

    def step(self) -> float:
        x, y = self.data.next_batch()
        if isinstance(self.net, Holder):  # FSDP2: the root's forward unshards the padding too
            logits, reg = self.net(x)
        else:
            logits = self.net(x)
            reg = self.shard.square().mean() if self.shard.numel() else self.shard.sum()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss = loss + 1e-6 * reg
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        return float(loss.detach())


def build(cfg: ModelConfig, rank: int, device: torch.device, distributed: bool) -> Workload:
    torch.manual_seed(cfg.seed)  # the same initial model on every rank
    model = TinyLM(cfg).to(device)
    fsdp = cfg.sharding == "fsdp"
    g = torch.Generator().manual_seed(cfg.seed + 1 + (0 if fsdp else rank))
    numel = cfg.shard_numel() * (cfg.world if fsdp else 1)
    shard = nn.Parameter((torch.randn(numel, generator=g) * 0.02).to(device))
    holder = Holder(model, shard)
    net: nn.Module = model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(holder)
        net = holder
    elif distributed:
        # The per-rank padding stays out of DDP: its gradient is this rank's own.
        net = nn.parallel.DistributedDataParallel(model)
    optim = torch.optim.AdamW(holder.parameters(), lr=3e-4, weight_decay=0.01)
    torch.manual_seed(cfg.seed + 100 + rank)  # per-rank dropout stream
    shard_param = holder.shard  # FSDP2 replaced it with its sharded DTensor parameter
    return Workload(cfg, model, shard_param, optim, TokenStream(cfg, rank, device), net, holder)


def describe(cfg: ModelConfig) -> str:
    params = cfg.param_count()
    mib = cfg.total_state_bytes() / (1 << 20)
    extra = f" + {cfg.shard_numel() / 1e6:.1f}M per-rank" if cfg.shard_numel() > 1 else ""
    how = "FSDP2-sharded" if cfg.sharding == "fsdp" else "DDP"
    return (
        f"TinyLM d={cfg.d_model} layers={cfg.layers} heads={cfg.heads} vocab={cfg.vocab} "
        f"seq={cfg.seq} batch={cfg.batch}: {params / 1e6:.1f}M params{extra}, {how}, AdamW; "
        f"state {mib:.0f} MiB per rank (~{math.ceil(mib)} MiB incl. data/RNG)"
    )
