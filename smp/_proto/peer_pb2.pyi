from smp._proto import snapshot_pb2 as _snapshot_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InfoRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("smp_version", "node_id", "grpc_address", "codec_engine", "knows_job")
    SMP_VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CODEC_ENGINE_FIELD_NUMBER: _ClassVar[int]
    KNOWS_JOB_FIELD_NUMBER: _ClassVar[int]
    smp_version: str
    node_id: str
    grpc_address: str
    codec_engine: str
    knows_job: bool
    def __init__(self, smp_version: _Optional[str] = ..., node_id: _Optional[str] = ..., grpc_address: _Optional[str] = ..., codec_engine: _Optional[str] = ..., knows_job: _Optional[bool] = ...) -> None: ...

class ChunkHeader(_message.Message):
    __slots__ = ("job_id", "step", "from_node", "stripe", "length", "manifest")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    STRIPE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    from_node: int
    stripe: int
    length: int
    manifest: _snapshot_pb2.NodeManifest
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ..., from_node: _Optional[int] = ..., stripe: _Optional[int] = ..., length: _Optional[int] = ..., manifest: _Optional[_Union[_snapshot_pb2.NodeManifest, _Mapping]] = ...) -> None: ...

class PushChunkRequest(_message.Message):
    __slots__ = ("header", "data", "checksum")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    header: ChunkHeader
    data: bytes
    checksum: int
    def __init__(self, header: _Optional[_Union[ChunkHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., checksum: _Optional[int] = ...) -> None: ...

class PushChunkResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProtectedRequest(_message.Message):
    __slots__ = ("job_id", "node", "step")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    node: int
    step: int
    def __init__(self, job_id: _Optional[str] = ..., node: _Optional[int] = ..., step: _Optional[int] = ...) -> None: ...

class ProtectedResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StepFailedRequest(_message.Message):
    __slots__ = ("job_id", "node", "step", "code", "message")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    node: int
    step: int
    code: str
    message: str
    def __init__(self, job_id: _Optional[str] = ..., node: _Optional[int] = ..., step: _Optional[int] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class StepFailedResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JobStateRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobStateResponse(_message.Message):
    __slots__ = ("has_committed", "committed_step", "manifests", "moved")
    HAS_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_STEP_FIELD_NUMBER: _ClassVar[int]
    MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    has_committed: bool
    committed_step: int
    manifests: _containers.RepeatedCompositeFieldContainer[_snapshot_pb2.NodeManifest]
    moved: bool
    def __init__(self, has_committed: _Optional[bool] = ..., committed_step: _Optional[int] = ..., manifests: _Optional[_Iterable[_Union[_snapshot_pb2.NodeManifest, _Mapping]]] = ..., moved: _Optional[bool] = ...) -> None: ...

class FetchCellRequest(_message.Message):
    __slots__ = ("job_id", "step", "stripe")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STRIPE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    stripe: int
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ..., stripe: _Optional[int] = ...) -> None: ...

class CellHeader(_message.Message):
    __slots__ = ("length", "checksum")
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    length: int
    checksum: int
    def __init__(self, length: _Optional[int] = ..., checksum: _Optional[int] = ...) -> None: ...

class FetchCellResponse(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: CellHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[CellHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class FetchSlotRequest(_message.Message):
    __slots__ = ("job_id", "rank", "step")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rank: int
    step: int
    def __init__(self, job_id: _Optional[str] = ..., rank: _Optional[int] = ..., step: _Optional[int] = ...) -> None: ...

class FetchSlotResponse(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: _snapshot_pb2.SlotRecord
    data: bytes
    def __init__(self, header: _Optional[_Union[_snapshot_pb2.SlotRecord, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...
