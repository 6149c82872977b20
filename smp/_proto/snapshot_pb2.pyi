from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TensorEntry(_message.Message):
    __slots__ = ("dtype", "shape", "offset", "nbytes", "device")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    nbytes: int
    device: str
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ..., nbytes: _Optional[int] = ..., device: _Optional[str] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("format_version", "tensors", "skeleton", "nbytes")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    SKELETON_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    tensors: _containers.RepeatedCompositeFieldContainer[TensorEntry]
    skeleton: bytes
    nbytes: int
    def __init__(self, format_version: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[TensorEntry, _Mapping]]] = ..., skeleton: _Optional[bytes] = ..., nbytes: _Optional[int] = ...) -> None: ...

class Checksums(_message.Message):
    __slots__ = ("algorithm", "chunk_size", "values")
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    algorithm: str
    chunk_size: int
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, algorithm: _Optional[str] = ..., chunk_size: _Optional[int] = ..., values: _Optional[_Iterable[int]] = ...) -> None: ...

class SlotRecord(_message.Message):
    __slots__ = ("job_id", "rank", "slot", "step", "nbytes", "manifest", "checksums", "completed_unix")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CHECKSUMS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_UNIX_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rank: int
    slot: int
    step: int
    nbytes: int
    manifest: bytes
    checksums: Checksums
    completed_unix: float
    def __init__(self, job_id: _Optional[str] = ..., rank: _Optional[int] = ..., slot: _Optional[int] = ..., step: _Optional[int] = ..., nbytes: _Optional[int] = ..., manifest: _Optional[bytes] = ..., checksums: _Optional[_Union[Checksums, _Mapping]] = ..., completed_unix: _Optional[float] = ...) -> None: ...

class ChunkDigest(_message.Message):
    __slots__ = ("stripe", "length", "checksum")
    STRIPE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    stripe: int
    length: int
    checksum: int
    def __init__(self, stripe: _Optional[int] = ..., length: _Optional[int] = ..., checksum: _Optional[int] = ...) -> None: ...

class NodeManifest(_message.Message):
    __slots__ = ("node", "step", "blob_bytes", "slots", "chunks")
    NODE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    BLOB_BYTES_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    node: int
    step: int
    blob_bytes: int
    slots: _containers.RepeatedCompositeFieldContainer[SlotRecord]
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkDigest]
    def __init__(self, node: _Optional[int] = ..., step: _Optional[int] = ..., blob_bytes: _Optional[int] = ..., slots: _Optional[_Iterable[_Union[SlotRecord, _Mapping]]] = ..., chunks: _Optional[_Iterable[_Union[ChunkDigest, _Mapping]]] = ...) -> None: ...
