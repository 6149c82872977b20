"""A local demo cluster: real SMP processes, real trainer ranks, real kills and recoveries.

`python -m ecsnap.demo` runs it; the integration tests drive the same pieces.
"""
