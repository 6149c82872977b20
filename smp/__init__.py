"""ecsnap's snapshot management process (SMP): the per-node sidecar daemon.

The daemon keeps trainer ranks' snapshots in shared-memory arenas, checksums them, and serves them
back at restore. It handles bytes only and never imports torch.
"""

__version__ = "0.1.0"
