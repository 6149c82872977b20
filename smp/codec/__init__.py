"""ecsnap's erasure codec: systematic Reed-Solomon over GF(2^8), byte-for-byte reedsolo's code.

    from smp.codec import Codec
    c = Codec(4, 2)                       # engine="auto": ISA-L when it loads, else numpy
    c.encode(data, parity)                # 4 data buffers in, 2 parity buffers overwritten
    c.decode({0: d0, 2: d2, 4: p0, 5: p1}, lost=[1, 3], out=[d1, d3])

Two engines give identical bytes: "isal" (Intel ISA-L via ctypes, several GB/s) and "numpy"
(portable, no native code). Neither needs torch. See Codec for the buffer rules.
"""

from smp.codec.buffers import Buffer, CodecError
from smp.codec.codec import Codec, available_engines, default_engine, describe_engine

__all__ = [
    "Buffer",
    "Codec",
    "CodecError",
    "available_engines",
    "default_engine",
    "describe_engine",
]
