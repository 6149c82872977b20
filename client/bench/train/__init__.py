"""`ecsnap bench train`: the end-to-end benchmark of training overhead and recovery time.

ecsnap (every step and every N steps, parity on and off) against no fault tolerance, `torch.save`
and `torch.distributed.checkpoint` (`save`, `async_save`), on one transformer workload, with
interleaved repeats. `python -m ecsnap.bench.train --help` lists the options.
"""
