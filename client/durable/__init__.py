"""The durable tier behind memory: committed snapshots persisted as DCP checkpoints.

- `policy`: what to persist, where, how often and how many to keep (arguments and environment);
- `store`: the step directories of a target (a directory or an fsspec URL), written atomically,
  listed, retired;
- `hashing`: checksums of what DCP writes (and its bandwidth cap), verified when read;
- `persister`: the background rounds that read committed steps from the SMPs' memory and write
  them, collectively, off the training path;
- `reload`: restore() from the newest complete persisted step when memory holds nothing newer.
"""
