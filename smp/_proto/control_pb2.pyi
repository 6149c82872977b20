from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    BAD_REQUEST: _ClassVar[ErrorCode]
    NOT_FOUND: _ClassVar[ErrorCode]
    MEMORY_LIMIT: _ClassVar[ErrorCode]
    STORE_FULL: _ClassVar[ErrorCode]
    CHECKSUM_MISMATCH: _ClassVar[ErrorCode]
    CONFLICT: _ClassVar[ErrorCode]
    TIMEOUT: _ClassVar[ErrorCode]
    ABORTED: _ClassVar[ErrorCode]
    NOT_REGISTERED: _ClassVar[ErrorCode]
    INTERNAL: _ClassVar[ErrorCode]
    BUSY: _ClassVar[ErrorCode]
    UNAUTHENTICATED: _ClassVar[ErrorCode]
    REBUILD_FAILED: _ClassVar[ErrorCode]
    PEER_UNAVAILABLE: _ClassVar[ErrorCode]

class SlotState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SLOT_STATE_UNSPECIFIED: _ClassVar[SlotState]
    EMPTY: _ClassVar[SlotState]
    WRITING: _ClassVar[SlotState]
    VERIFYING: _ClassVar[SlotState]
    COMPLETE: _ClassVar[SlotState]
ERROR_CODE_UNSPECIFIED: ErrorCode
BAD_REQUEST: ErrorCode
NOT_FOUND: ErrorCode
MEMORY_LIMIT: ErrorCode
STORE_FULL: ErrorCode
CHECKSUM_MISMATCH: ErrorCode
CONFLICT: ErrorCode
TIMEOUT: ErrorCode
ABORTED: ErrorCode
NOT_REGISTERED: ErrorCode
INTERNAL: ErrorCode
BUSY: ErrorCode
UNAUTHENTICATED: ErrorCode
REBUILD_FAILED: ErrorCode
PEER_UNAVAILABLE: ErrorCode
SLOT_STATE_UNSPECIFIED: SlotState
EMPTY: SlotState
WRITING: SlotState
VERIFYING: SlotState
COMPLETE: SlotState

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("rank", "world_size", "local_rank", "local_world_size", "node_rank", "num_nodes", "pid", "hostname", "session")
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    LOCAL_WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    NUM_NODES_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    pid: int
    hostname: str
    session: int
    def __init__(self, rank: _Optional[int] = ..., world_size: _Optional[int] = ..., local_rank: _Optional[int] = ..., local_world_size: _Optional[int] = ..., node_rank: _Optional[int] = ..., num_nodes: _Optional[int] = ..., pid: _Optional[int] = ..., hostname: _Optional[str] = ..., session: _Optional[int] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("smp_version", "grpc_address", "store_dir", "codec_engine", "smp_pid", "persist_to", "persist_every", "persist_keep")
    SMP_VERSION_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STORE_DIR_FIELD_NUMBER: _ClassVar[int]
    CODEC_ENGINE_FIELD_NUMBER: _ClassVar[int]
    SMP_PID_FIELD_NUMBER: _ClassVar[int]
    PERSIST_TO_FIELD_NUMBER: _ClassVar[int]
    PERSIST_EVERY_FIELD_NUMBER: _ClassVar[int]
    PERSIST_KEEP_FIELD_NUMBER: _ClassVar[int]
    smp_version: str
    grpc_address: str
    store_dir: str
    codec_engine: str
    smp_pid: int
    persist_to: str
    persist_every: int
    persist_keep: int
    def __init__(self, smp_version: _Optional[str] = ..., grpc_address: _Optional[str] = ..., store_dir: _Optional[str] = ..., codec_engine: _Optional[str] = ..., smp_pid: _Optional[int] = ..., persist_to: _Optional[str] = ..., persist_every: _Optional[int] = ..., persist_keep: _Optional[int] = ...) -> None: ...

class BeginSaveRequest(_message.Message):
    __slots__ = ("rank", "step", "nbytes", "session")
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    rank: int
    step: int
    nbytes: int
    session: int
    def __init__(self, rank: _Optional[int] = ..., step: _Optional[int] = ..., nbytes: _Optional[int] = ..., session: _Optional[int] = ...) -> None: ...

class BeginSaveResponse(_message.Message):
    __slots__ = ("slot", "generation", "path", "capacity")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    slot: int
    generation: int
    path: str
    capacity: int
    def __init__(self, slot: _Optional[int] = ..., generation: _Optional[int] = ..., path: _Optional[str] = ..., capacity: _Optional[int] = ...) -> None: ...

class CommitSaveRequest(_message.Message):
    __slots__ = ("rank", "step", "slot", "generation", "nbytes", "manifest", "session")
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    rank: int
    step: int
    slot: int
    generation: int
    nbytes: int
    manifest: bytes
    session: int
    def __init__(self, rank: _Optional[int] = ..., step: _Optional[int] = ..., slot: _Optional[int] = ..., generation: _Optional[int] = ..., nbytes: _Optional[int] = ..., manifest: _Optional[bytes] = ..., session: _Optional[int] = ...) -> None: ...

class CommitSaveResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AbortSaveRequest(_message.Message):
    __slots__ = ("rank", "step", "slot", "generation", "reason", "session")
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    rank: int
    step: int
    slot: int
    generation: int
    reason: str
    session: int
    def __init__(self, rank: _Optional[int] = ..., step: _Optional[int] = ..., slot: _Optional[int] = ..., generation: _Optional[int] = ..., reason: _Optional[str] = ..., session: _Optional[int] = ...) -> None: ...

class AbortSaveResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SlotInfo(_message.Message):
    __slots__ = ("slot", "state", "step", "nbytes", "capacity")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    slot: int
    state: SlotState
    step: int
    nbytes: int
    capacity: int
    def __init__(self, slot: _Optional[int] = ..., state: _Optional[_Union[SlotState, str]] = ..., step: _Optional[int] = ..., nbytes: _Optional[int] = ..., capacity: _Optional[int] = ...) -> None: ...

class ListStepsRequest(_message.Message):
    __slots__ = ("rank",)
    RANK_FIELD_NUMBER: _ClassVar[int]
    rank: int
    def __init__(self, rank: _Optional[int] = ...) -> None: ...

class ListStepsResponse(_message.Message):
    __slots__ = ("complete_steps", "has_committed", "committed_step", "world_sizes", "finished", "finished_step")
    COMPLETE_STEPS_FIELD_NUMBER: _ClassVar[int]
    HAS_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_STEP_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZES_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_STEP_FIELD_NUMBER: _ClassVar[int]
    complete_steps: _containers.RepeatedScalarFieldContainer[int]
    has_committed: bool
    committed_step: int
    world_sizes: _containers.RepeatedScalarFieldContainer[int]
    finished: bool
    finished_step: int
    def __init__(self, complete_steps: _Optional[_Iterable[int]] = ..., has_committed: _Optional[bool] = ..., committed_step: _Optional[int] = ..., world_sizes: _Optional[_Iterable[int]] = ..., finished: _Optional[bool] = ..., finished_step: _Optional[int] = ...) -> None: ...

class OpenSnapshotRequest(_message.Message):
    __slots__ = ("rank", "step", "skip_verify")
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SKIP_VERIFY_FIELD_NUMBER: _ClassVar[int]
    rank: int
    step: int
    skip_verify: bool
    def __init__(self, rank: _Optional[int] = ..., step: _Optional[int] = ..., skip_verify: _Optional[bool] = ...) -> None: ...

class OpenSnapshotResponse(_message.Message):
    __slots__ = ("slot", "path", "nbytes", "manifest", "verify_seconds")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    VERIFY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    slot: int
    path: str
    nbytes: int
    manifest: bytes
    verify_seconds: float
    def __init__(self, slot: _Optional[int] = ..., path: _Optional[str] = ..., nbytes: _Optional[int] = ..., manifest: _Optional[bytes] = ..., verify_seconds: _Optional[float] = ...) -> None: ...

class PinRequest(_message.Message):
    __slots__ = ("rank", "step", "pinned", "lease_s")
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    rank: int
    step: int
    pinned: bool
    lease_s: int
    def __init__(self, rank: _Optional[int] = ..., step: _Optional[int] = ..., pinned: _Optional[bool] = ..., lease_s: _Optional[int] = ...) -> None: ...

class PinResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WaitCommittedRequest(_message.Message):
    __slots__ = ("step", "timeout_ms")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    step: int
    timeout_ms: int
    def __init__(self, step: _Optional[int] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class WaitCommittedResponse(_message.Message):
    __slots__ = ("committed", "has_committed", "committed_step", "degraded")
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    HAS_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_STEP_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    committed: bool
    has_committed: bool
    committed_step: int
    degraded: str
    def __init__(self, committed: _Optional[bool] = ..., has_committed: _Optional[bool] = ..., committed_step: _Optional[int] = ..., degraded: _Optional[str] = ...) -> None: ...

class ConfigureRequest(_message.Message):
    __slots__ = ("node_rank", "num_nodes", "group_size", "parity", "placement", "peer_addresses", "secret")
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    NUM_NODES_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    PARITY_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    node_rank: int
    num_nodes: int
    group_size: int
    parity: int
    placement: str
    peer_addresses: _containers.RepeatedScalarFieldContainer[str]
    secret: bytes
    def __init__(self, node_rank: _Optional[int] = ..., num_nodes: _Optional[int] = ..., group_size: _Optional[int] = ..., parity: _Optional[int] = ..., placement: _Optional[str] = ..., peer_addresses: _Optional[_Iterable[str]] = ..., secret: _Optional[bytes] = ...) -> None: ...

class ConfigureResponse(_message.Message):
    __slots__ = ("layout",)
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    layout: str
    def __init__(self, layout: _Optional[str] = ...) -> None: ...

class SaveReadyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SaveReadyResponse(_message.Message):
    __slots__ = ("ready", "has_pending", "pending_step", "failure")
    READY_FIELD_NUMBER: _ClassVar[int]
    HAS_PENDING_FIELD_NUMBER: _ClassVar[int]
    PENDING_STEP_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    has_pending: bool
    pending_step: int
    failure: Error
    def __init__(self, ready: _Optional[bool] = ..., has_pending: _Optional[bool] = ..., pending_step: _Optional[int] = ..., failure: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class LocateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeldStep(_message.Message):
    __slots__ = ("rank", "step", "world_size", "nbytes")
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    rank: int
    step: int
    world_size: int
    nbytes: int
    def __init__(self, rank: _Optional[int] = ..., step: _Optional[int] = ..., world_size: _Optional[int] = ..., nbytes: _Optional[int] = ...) -> None: ...

class LocateResponse(_message.Message):
    __slots__ = ("held", "has_committed", "committed_step")
    HELD_FIELD_NUMBER: _ClassVar[int]
    HAS_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_STEP_FIELD_NUMBER: _ClassVar[int]
    held: _containers.RepeatedCompositeFieldContainer[HeldStep]
    has_committed: bool
    committed_step: int
    def __init__(self, held: _Optional[_Iterable[_Union[HeldStep, _Mapping]]] = ..., has_committed: _Optional[bool] = ..., committed_step: _Optional[int] = ...) -> None: ...

class StageRequest(_message.Message):
    __slots__ = ("rank", "step", "source_node", "timeout_ms")
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NODE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    rank: int
    step: int
    source_node: int
    timeout_ms: int
    def __init__(self, rank: _Optional[int] = ..., step: _Optional[int] = ..., source_node: _Optional[int] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class StageResponse(_message.Message):
    __slots__ = ("bytes_fetched", "seconds")
    BYTES_FETCHED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    bytes_fetched: int
    seconds: float
    def __init__(self, bytes_fetched: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class RetainRequest(_message.Message):
    __slots__ = ("ranks",)
    RANKS_FIELD_NUMBER: _ClassVar[int]
    ranks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ranks: _Optional[_Iterable[int]] = ...) -> None: ...

class RetainResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ForgetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ForgetResponse(_message.Message):
    __slots__ = ("freed_bytes",)
    FREED_BYTES_FIELD_NUMBER: _ClassVar[int]
    freed_bytes: int
    def __init__(self, freed_bytes: _Optional[int] = ...) -> None: ...

class RebuildRequest(_message.Message):
    __slots__ = ("timeout_ms",)
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    timeout_ms: int
    def __init__(self, timeout_ms: _Optional[int] = ...) -> None: ...

class RebuildResponse(_message.Message):
    __slots__ = ("rebuilt", "has_step", "step", "seconds", "bytes_fetched")
    REBUILT_FIELD_NUMBER: _ClassVar[int]
    HAS_STEP_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FETCHED_FIELD_NUMBER: _ClassVar[int]
    rebuilt: bool
    has_step: bool
    step: int
    seconds: float
    bytes_fetched: int
    def __init__(self, rebuilt: _Optional[bool] = ..., has_step: _Optional[bool] = ..., step: _Optional[int] = ..., seconds: _Optional[float] = ..., bytes_fetched: _Optional[int] = ...) -> None: ...

class PersistReportRequest(_message.Message):
    __slots__ = ("target", "has_step", "step", "bytes", "seconds", "error", "attempted_step")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    HAS_STEP_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTED_STEP_FIELD_NUMBER: _ClassVar[int]
    target: str
    has_step: bool
    step: int
    bytes: int
    seconds: float
    error: str
    attempted_step: int
    def __init__(self, target: _Optional[str] = ..., has_step: _Optional[bool] = ..., step: _Optional[int] = ..., bytes: _Optional[int] = ..., seconds: _Optional[float] = ..., error: _Optional[str] = ..., attempted_step: _Optional[int] = ...) -> None: ...

class PersistReportResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FinishRequest(_message.Message):
    __slots__ = ("step",)
    STEP_FIELD_NUMBER: _ClassVar[int]
    step: int
    def __init__(self, step: _Optional[int] = ...) -> None: ...

class FinishResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RankStatus(_message.Message):
    __slots__ = ("rank", "local_rank", "pid", "slots", "bytes")
    RANK_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    rank: int
    local_rank: int
    pid: int
    slots: _containers.RepeatedCompositeFieldContainer[SlotInfo]
    bytes: int
    def __init__(self, rank: _Optional[int] = ..., local_rank: _Optional[int] = ..., pid: _Optional[int] = ..., slots: _Optional[_Iterable[_Union[SlotInfo, _Mapping]]] = ..., bytes: _Optional[int] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "world_size", "num_nodes", "has_committed", "committed_step", "committed_age_s", "bytes", "ranks", "last_error", "protection", "node_rank", "group_members", "parity_bytes", "has_protected", "protected_step", "degraded", "idle_s", "persist_target", "has_persisted", "persisted_step", "persisted_age_s", "persist_bytes_per_s", "persist_failures", "persist_error", "finished", "finished_step")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_NODES_FIELD_NUMBER: _ClassVar[int]
    HAS_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_STEP_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_AGE_S_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    PROTECTION_FIELD_NUMBER: _ClassVar[int]
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    GROUP_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    PARITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    HAS_PROTECTED_FIELD_NUMBER: _ClassVar[int]
    PROTECTED_STEP_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    IDLE_S_FIELD_NUMBER: _ClassVar[int]
    PERSIST_TARGET_FIELD_NUMBER: _ClassVar[int]
    HAS_PERSISTED_FIELD_NUMBER: _ClassVar[int]
    PERSISTED_STEP_FIELD_NUMBER: _ClassVar[int]
    PERSISTED_AGE_S_FIELD_NUMBER: _ClassVar[int]
    PERSIST_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    PERSIST_FAILURES_FIELD_NUMBER: _ClassVar[int]
    PERSIST_ERROR_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_STEP_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    world_size: int
    num_nodes: int
    has_committed: bool
    committed_step: int
    committed_age_s: float
    bytes: int
    ranks: _containers.RepeatedCompositeFieldContainer[RankStatus]
    last_error: str
    protection: str
    node_rank: int
    group_members: _containers.RepeatedScalarFieldContainer[int]
    parity_bytes: int
    has_protected: bool
    protected_step: int
    degraded: str
    idle_s: float
    persist_target: str
    has_persisted: bool
    persisted_step: int
    persisted_age_s: float
    persist_bytes_per_s: float
    persist_failures: int
    persist_error: str
    finished: bool
    finished_step: int
    def __init__(self, job_id: _Optional[str] = ..., world_size: _Optional[int] = ..., num_nodes: _Optional[int] = ..., has_committed: _Optional[bool] = ..., committed_step: _Optional[int] = ..., committed_age_s: _Optional[float] = ..., bytes: _Optional[int] = ..., ranks: _Optional[_Iterable[_Union[RankStatus, _Mapping]]] = ..., last_error: _Optional[str] = ..., protection: _Optional[str] = ..., node_rank: _Optional[int] = ..., group_members: _Optional[_Iterable[int]] = ..., parity_bytes: _Optional[int] = ..., has_protected: _Optional[bool] = ..., protected_step: _Optional[int] = ..., degraded: _Optional[str] = ..., idle_s: _Optional[float] = ..., persist_target: _Optional[str] = ..., has_persisted: _Optional[bool] = ..., persisted_step: _Optional[int] = ..., persisted_age_s: _Optional[float] = ..., persist_bytes_per_s: _Optional[float] = ..., persist_failures: _Optional[int] = ..., persist_error: _Optional[str] = ..., finished: _Optional[bool] = ..., finished_step: _Optional[int] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("version", "pid", "socket", "store_dir", "grpc_address", "memory_limit", "memory_used", "store_free", "codec_engine", "uptime_s", "jobs", "jobs_hidden")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    SOCKET_FIELD_NUMBER: _ClassVar[int]
    STORE_DIR_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_FIELD_NUMBER: _ClassVar[int]
    STORE_FREE_FIELD_NUMBER: _ClassVar[int]
    CODEC_ENGINE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    JOBS_HIDDEN_FIELD_NUMBER: _ClassVar[int]
    version: str
    pid: int
    socket: str
    store_dir: str
    grpc_address: str
    memory_limit: int
    memory_used: int
    store_free: int
    codec_engine: str
    uptime_s: float
    jobs: _containers.RepeatedCompositeFieldContainer[JobStatus]
    jobs_hidden: bool
    def __init__(self, version: _Optional[str] = ..., pid: _Optional[int] = ..., socket: _Optional[str] = ..., store_dir: _Optional[str] = ..., grpc_address: _Optional[str] = ..., memory_limit: _Optional[int] = ..., memory_used: _Optional[int] = ..., store_free: _Optional[int] = ..., codec_engine: _Optional[str] = ..., uptime_s: _Optional[float] = ..., jobs: _Optional[_Iterable[_Union[JobStatus, _Mapping]]] = ..., jobs_hidden: _Optional[bool] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("request_id", "job_id", "job_key", "admin_token", "register", "begin_save", "commit_save", "abort_save", "list_steps", "open_snapshot", "wait_committed", "status", "configure", "save_ready", "rebuild", "pin", "forget", "locate", "stage", "retain", "persist_report", "finish")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_KEY_FIELD_NUMBER: _ClassVar[int]
    ADMIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    BEGIN_SAVE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_SAVE_FIELD_NUMBER: _ClassVar[int]
    ABORT_SAVE_FIELD_NUMBER: _ClassVar[int]
    LIST_STEPS_FIELD_NUMBER: _ClassVar[int]
    OPEN_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    WAIT_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CONFIGURE_FIELD_NUMBER: _ClassVar[int]
    SAVE_READY_FIELD_NUMBER: _ClassVar[int]
    REBUILD_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    FORGET_FIELD_NUMBER: _ClassVar[int]
    LOCATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    RETAIN_FIELD_NUMBER: _ClassVar[int]
    PERSIST_REPORT_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    job_id: str
    job_key: bytes
    admin_token: bytes
    register: RegisterRequest
    begin_save: BeginSaveRequest
    commit_save: CommitSaveRequest
    abort_save: AbortSaveRequest
    list_steps: ListStepsRequest
    open_snapshot: OpenSnapshotRequest
    wait_committed: WaitCommittedRequest
    status: StatusRequest
    configure: ConfigureRequest
    save_ready: SaveReadyRequest
    rebuild: RebuildRequest
    pin: PinRequest
    forget: ForgetRequest
    locate: LocateRequest
    stage: StageRequest
    retain: RetainRequest
    persist_report: PersistReportRequest
    finish: FinishRequest
    def __init__(self, request_id: _Optional[int] = ..., job_id: _Optional[str] = ..., job_key: _Optional[bytes] = ..., admin_token: _Optional[bytes] = ..., register: _Optional[_Union[RegisterRequest, _Mapping]] = ..., begin_save: _Optional[_Union[BeginSaveRequest, _Mapping]] = ..., commit_save: _Optional[_Union[CommitSaveRequest, _Mapping]] = ..., abort_save: _Optional[_Union[AbortSaveRequest, _Mapping]] = ..., list_steps: _Optional[_Union[ListStepsRequest, _Mapping]] = ..., open_snapshot: _Optional[_Union[OpenSnapshotRequest, _Mapping]] = ..., wait_committed: _Optional[_Union[WaitCommittedRequest, _Mapping]] = ..., status: _Optional[_Union[StatusRequest, _Mapping]] = ..., configure: _Optional[_Union[ConfigureRequest, _Mapping]] = ..., save_ready: _Optional[_Union[SaveReadyRequest, _Mapping]] = ..., rebuild: _Optional[_Union[RebuildRequest, _Mapping]] = ..., pin: _Optional[_Union[PinRequest, _Mapping]] = ..., forget: _Optional[_Union[ForgetRequest, _Mapping]] = ..., locate: _Optional[_Union[LocateRequest, _Mapping]] = ..., stage: _Optional[_Union[StageRequest, _Mapping]] = ..., retain: _Optional[_Union[RetainRequest, _Mapping]] = ..., persist_report: _Optional[_Union[PersistReportRequest, _Mapping]] = ..., finish: _Optional[_Union[FinishRequest, _Mapping]] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("request_id", "error", "register", "begin_save", "commit_save", "abort_save", "list_steps", "open_snapshot", "wait_committed", "status", "configure", "save_ready", "rebuild", "pin", "forget", "locate", "stage", "retain", "persist_report", "finish")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    BEGIN_SAVE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_SAVE_FIELD_NUMBER: _ClassVar[int]
    ABORT_SAVE_FIELD_NUMBER: _ClassVar[int]
    LIST_STEPS_FIELD_NUMBER: _ClassVar[int]
    OPEN_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    WAIT_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CONFIGURE_FIELD_NUMBER: _ClassVar[int]
    SAVE_READY_FIELD_NUMBER: _ClassVar[int]
    REBUILD_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    FORGET_FIELD_NUMBER: _ClassVar[int]
    LOCATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    RETAIN_FIELD_NUMBER: _ClassVar[int]
    PERSIST_REPORT_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    error: Error
    register: RegisterResponse
    begin_save: BeginSaveResponse
    commit_save: CommitSaveResponse
    abort_save: AbortSaveResponse
    list_steps: ListStepsResponse
    open_snapshot: OpenSnapshotResponse
    wait_committed: WaitCommittedResponse
    status: StatusResponse
    configure: ConfigureResponse
    save_ready: SaveReadyResponse
    rebuild: RebuildResponse
    pin: PinResponse
    forget: ForgetResponse
    locate: LocateResponse
    stage: StageResponse
    retain: RetainResponse
    persist_report: PersistReportResponse
    finish: FinishResponse
    def __init__(self, request_id: _Optional[int] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., register: _Optional[_Union[RegisterResponse, _Mapping]] = ..., begin_save: _Optional[_Union[BeginSaveResponse, _Mapping]] = ..., commit_save: _Optional[_Union[CommitSaveResponse, _Mapping]] = ..., abort_save: _Optional[_Union[AbortSaveResponse, _Mapping]] = ..., list_steps: _Optional[_Union[ListStepsResponse, _Mapping]] = ..., open_snapshot: _Optional[_Union[OpenSnapshotResponse, _Mapping]] = ..., wait_committed: _Optional[_Union[WaitCommittedResponse, _Mapping]] = ..., status: _Optional[_Union[StatusResponse, _Mapping]] = ..., configure: _Optional[_Union[ConfigureResponse, _Mapping]] = ..., save_ready: _Optional[_Union[SaveReadyResponse, _Mapping]] = ..., rebuild: _Optional[_Union[RebuildResponse, _Mapping]] = ..., pin: _Optional[_Union[PinResponse, _Mapping]] = ..., forget: _Optional[_Union[ForgetResponse, _Mapping]] = ..., locate: _Optional[_Union[LocateResponse, _Mapping]] = ..., stage: _Optional[_Union[StageResponse, _Mapping]] = ..., retain: _Optional[_Union[RetainResponse, _Mapping]] = ..., persist_report: _Optional[_Union[PersistReportResponse, _Mapping]] = ..., finish: _Optional[_Union[FinishResponse, _Mapping]] = ...) -> None: ...
