"""Test your training script's recovery the way ecsnap tests its own: real SMP processes, real
ranks, real kills, bit-for-bit comparisons.

    from ecsnap.testing import LocalCluster, launch_ranks, compare_runs

    with LocalCluster(root, nodes=2) as cluster:
        ref = launch_ranks(root / "ref", "ref", cluster.sockets, 1, ["--steps", "20"],
                           module="my_train")
        assert ref.wait(300) == [0, 0]
        killed = launch_ranks(root / "run", "job", cluster.sockets, 1, ["--die-at", "10"], ...)
        cluster.lose(1)                       # node 1 gone with its memory, a fresh SMP in place
        again = launch_ranks(root / "run", "job", cluster.sockets, 1, ["--steps", "20"], ...)
        assert compare_runs(root / "ref", root / "run", world=2) == []
"""

from ecsnap.testing.cluster import LocalCluster
from ecsnap.testing.ranks import (
    RankRun,
    compare_runs,
    crash,
    launch_ranks,
    read_losses,
    read_restore,
    start_ranks,
    states_equal,
    torchrun_env,
)
from smp.testing import LocalSMP, free_port, short_tmpdir

__all__ = [
    "LocalCluster",
    "LocalSMP",
    "RankRun",
    "compare_runs",
    "crash",
    "free_port",
    "launch_ranks",
    "read_losses",
    "read_restore",
    "short_tmpdir",
    "start_ranks",
    "states_equal",
    "torchrun_env",
]
