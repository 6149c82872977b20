"""Benchmarks of the trainer library, reached through `ecsnap bench ...`:

local    save/restore on one node against torch.save / torch.load (`local`)
cluster  parity exchange and node rebuild across local SMPs against raw TCP and plain gRPC
train    end-to-end training overhead and recovery against torch.save and DCP (`train/`)
chaos    a training job under random faults ends bit for bit like an uninterrupted one

Each prints ratios against baselines run side by side in the same invocation.
"""
