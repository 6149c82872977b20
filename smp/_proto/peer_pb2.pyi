from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

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
