"""Protection across nodes: parity of every node's snapshot held by the other nodes of its group.

membership  the job's nodes as its ranks introduced them (layout, peers, secret), persisted
send        this node's chunks to their parity holders; announcing protection and failures
receive     parity cells filled as peers' chunks stream in (`ParityHolder`, `ChunkSink`)
plan        what a rebuild fetches: the committed step, the survivors, the digests to check
rebuild     a lost node's snapshot from its group: fetch and fold, verify
serve       what this node holds for a peer (job state, cells, whole slots)
stage       a rank's snapshot fetched from the node that holds it (renumbered or resized jobs)
coordinator `CrossNode`: configure, authorize, commit bookkeeping, serving peers, rebuild

It sees the local snapshots only through `smp.local.LocalSnapshots` and hears of saves as the
service's `SnapshotListener`; the gRPC server (`smp.peer`) translates the wire into calls here.
"""
