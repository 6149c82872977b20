from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TensorEntry(_message.Message):
    __slots__ = ("dtype", "shape", "device", "span", "stride", "span_offset", "requires_grad", "parameter", "dtensor", "path")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    SPAN_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    SPAN_OFFSET_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_GRAD_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_FIELD_NUMBER: _ClassVar[int]
    DTENSOR_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    device: str
    span: int
    stride: _containers.RepeatedScalarFieldContainer[int]
    span_offset: int
    requires_grad: bool
    parameter: bool
    dtensor: DTensorMeta
    path: str
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., device: _Optional[str] = ..., span: _Optional[int] = ..., stride: _Optional[_Iterable[int]] = ..., span_offset: _Optional[int] = ..., requires_grad: _Optional[bool] = ..., parameter: _Optional[bool] = ..., dtensor: _Optional[_Union[DTensorMeta, _Mapping]] = ..., path: _Optional[str] = ...) -> None: ...

class Span(_message.Message):
    __slots__ = ("offset", "nbytes", "device")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    nbytes: int
    device: str
    def __init__(self, offset: _Optional[int] = ..., nbytes: _Optional[int] = ..., device: _Optional[str] = ...) -> None: ...

class Placement(_message.Message):
    __slots__ = ("kind", "dim", "reduce_op", "split_factor")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Placement.Kind]
        SHARD: _ClassVar[Placement.Kind]
        REPLICATE: _ClassVar[Placement.Kind]
        PARTIAL: _ClassVar[Placement.Kind]
        STRIDED_SHARD: _ClassVar[Placement.Kind]
    KIND_UNSPECIFIED: Placement.Kind
    SHARD: Placement.Kind
    REPLICATE: Placement.Kind
    PARTIAL: Placement.Kind
    STRIDED_SHARD: Placement.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    REDUCE_OP_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FACTOR_FIELD_NUMBER: _ClassVar[int]
    kind: Placement.Kind
    dim: int
    reduce_op: str
    split_factor: int
    def __init__(self, kind: _Optional[_Union[Placement.Kind, str]] = ..., dim: _Optional[int] = ..., reduce_op: _Optional[str] = ..., split_factor: _Optional[int] = ...) -> None: ...

class DTensorMeta(_message.Message):
    __slots__ = ("global_shape", "global_stride", "device_type", "mesh_shape", "mesh_ranks", "mesh_dim_names", "coordinate", "placements", "offsets")
    GLOBAL_SHAPE_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_STRIDE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    MESH_SHAPE_FIELD_NUMBER: _ClassVar[int]
    MESH_RANKS_FIELD_NUMBER: _ClassVar[int]
    MESH_DIM_NAMES_FIELD_NUMBER: _ClassVar[int]
    COORDINATE_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    global_shape: _containers.RepeatedScalarFieldContainer[int]
    global_stride: _containers.RepeatedScalarFieldContainer[int]
    device_type: str
    mesh_shape: _containers.RepeatedScalarFieldContainer[int]
    mesh_ranks: _containers.RepeatedScalarFieldContainer[int]
    mesh_dim_names: _containers.RepeatedScalarFieldContainer[str]
    coordinate: _containers.RepeatedScalarFieldContainer[int]
    placements: _containers.RepeatedCompositeFieldContainer[Placement]
    offsets: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, global_shape: _Optional[_Iterable[int]] = ..., global_stride: _Optional[_Iterable[int]] = ..., device_type: _Optional[str] = ..., mesh_shape: _Optional[_Iterable[int]] = ..., mesh_ranks: _Optional[_Iterable[int]] = ..., mesh_dim_names: _Optional[_Iterable[str]] = ..., coordinate: _Optional[_Iterable[int]] = ..., placements: _Optional[_Iterable[_Union[Placement, _Mapping]]] = ..., offsets: _Optional[_Iterable[int]] = ...) -> None: ...

class ModuleInfo(_message.Message):
    __slots__ = ("key", "ddp")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DDP_FIELD_NUMBER: _ClassVar[int]
    key: str
    ddp: bool
    def __init__(self, key: _Optional[str] = ..., ddp: _Optional[bool] = ...) -> None: ...

class OptimizerInfo(_message.Message):
    __slots__ = ("key", "param_fqns")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PARAM_FQNS_FIELD_NUMBER: _ClassVar[int]
    key: str
    param_fqns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., param_fqns: _Optional[_Iterable[str]] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("format_version", "tensors", "skeleton", "nbytes", "spans", "modules", "optimizers", "rank", "world_size")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    SKELETON_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    MODULES_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZERS_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    tensors: _containers.RepeatedCompositeFieldContainer[TensorEntry]
    skeleton: bytes
    nbytes: int
    spans: _containers.RepeatedCompositeFieldContainer[Span]
    modules: _containers.RepeatedCompositeFieldContainer[ModuleInfo]
    optimizers: _containers.RepeatedCompositeFieldContainer[OptimizerInfo]
    rank: int
    world_size: int
    def __init__(self, format_version: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[TensorEntry, _Mapping]]] = ..., skeleton: _Optional[bytes] = ..., nbytes: _Optional[int] = ..., spans: _Optional[_Iterable[_Union[Span, _Mapping]]] = ..., modules: _Optional[_Iterable[_Union[ModuleInfo, _Mapping]]] = ..., optimizers: _Optional[_Iterable[_Union[OptimizerInfo, _Mapping]]] = ..., rank: _Optional[int] = ..., world_size: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("job_id", "rank", "slot", "step", "nbytes", "manifest", "checksums", "completed_unix", "arena_inode", "world_size")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CHECKSUMS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_UNIX_FIELD_NUMBER: _ClassVar[int]
    ARENA_INODE_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rank: int
    slot: int
    step: int
    nbytes: int
    manifest: bytes
    checksums: Checksums
    completed_unix: float
    arena_inode: int
    world_size: int
    def __init__(self, job_id: _Optional[str] = ..., rank: _Optional[int] = ..., slot: _Optional[int] = ..., step: _Optional[int] = ..., nbytes: _Optional[int] = ..., manifest: _Optional[bytes] = ..., checksums: _Optional[_Union[Checksums, _Mapping]] = ..., completed_unix: _Optional[float] = ..., arena_inode: _Optional[int] = ..., world_size: _Optional[int] = ...) -> None: ...

class ChunkDigest(_message.Message):
    __slots__ = ("stripe", "length", "checksum", "node")
    STRIPE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    stripe: int
    length: int
    checksum: int
    node: int
    def __init__(self, stripe: _Optional[int] = ..., length: _Optional[int] = ..., checksum: _Optional[int] = ..., node: _Optional[int] = ...) -> None: ...

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

class ParityRecord(_message.Message):
    __slots__ = ("job_id", "row", "slot", "step", "stripe", "length", "checksum", "contributors", "manifests", "arena_inode")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STRIPE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    ARENA_INODE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    row: int
    slot: int
    step: int
    stripe: int
    length: int
    checksum: int
    contributors: _containers.RepeatedCompositeFieldContainer[ChunkDigest]
    manifests: _containers.RepeatedCompositeFieldContainer[NodeManifest]
    arena_inode: int
    def __init__(self, job_id: _Optional[str] = ..., row: _Optional[int] = ..., slot: _Optional[int] = ..., step: _Optional[int] = ..., stripe: _Optional[int] = ..., length: _Optional[int] = ..., checksum: _Optional[int] = ..., contributors: _Optional[_Iterable[_Union[ChunkDigest, _Mapping]]] = ..., manifests: _Optional[_Iterable[_Union[NodeManifest, _Mapping]]] = ..., arena_inode: _Optional[int] = ...) -> None: ...

class JobKeyRecord(_message.Message):
    __slots__ = ("job_id", "digest")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    digest: bytes
    def __init__(self, job_id: _Optional[str] = ..., digest: _Optional[bytes] = ...) -> None: ...

class FinishedRecord(_message.Message):
    __slots__ = ("job_id", "step")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ...) -> None: ...

class ClusterRecord(_message.Message):
    __slots__ = ("job_id", "node", "num_nodes", "group_size", "parity", "placement", "addresses", "secret", "has_committed", "committed", "sent")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    NUM_NODES_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    PARITY_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    HAS_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    node: int
    num_nodes: int
    group_size: int
    parity: int
    placement: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    secret: bytes
    has_committed: bool
    committed: int
    sent: _containers.RepeatedCompositeFieldContainer[ChunkDigest]
    def __init__(self, job_id: _Optional[str] = ..., node: _Optional[int] = ..., num_nodes: _Optional[int] = ..., group_size: _Optional[int] = ..., parity: _Optional[int] = ..., placement: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., secret: _Optional[bytes] = ..., has_committed: _Optional[bool] = ..., committed: _Optional[int] = ..., sent: _Optional[_Iterable[_Union[ChunkDigest, _Mapping]]] = ...) -> None: ...

class RecordFile(_message.Message):
    __slots__ = ("record", "checksum")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    record: bytes
    checksum: int
    def __init__(self, record: _Optional[bytes] = ..., checksum: _Optional[int] = ...) -> None: ...
