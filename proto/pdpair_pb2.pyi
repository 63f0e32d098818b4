from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FailureSide(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_UNSPECIFIED: _ClassVar[FailureSide]
    PREFILL_UNAVAILABLE: _ClassVar[FailureSide]
    PREFILL_DRAINING: _ClassVar[FailureSide]
    PREFILL_OVERLOADED: _ClassVar[FailureSide]
    TRANSFER_FAILED: _ClassVar[FailureSide]
    DECODE_OVERLOADED: _ClassVar[FailureSide]
    DECODE_DRAINING: _ClassVar[FailureSide]
    PREFILL_FAILED: _ClassVar[FailureSide]
FAILURE_UNSPECIFIED: FailureSide
PREFILL_UNAVAILABLE: FailureSide
PREFILL_DRAINING: FailureSide
PREFILL_OVERLOADED: FailureSide
TRANSFER_FAILED: FailureSide
DECODE_OVERLOADED: FailureSide
DECODE_DRAINING: FailureSide
PREFILL_FAILED: FailureSide

class SamplingParams(_message.Message):
    __slots__ = ("max_new_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids", "ignore_eos", "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias")
    class LogitBiasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    ignore_eos: bool
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    logit_bias: _containers.ScalarMap[int, float]
    def __init__(self, max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., min_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., ignore_eos: _Optional[bool] = ..., presence_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., logit_bias: _Optional[_Mapping[int, float]] = ...) -> None: ...

class MemoryRegion(_message.Message):
    __slots__ = ("kind", "base_ptr", "item_bytes", "num_items", "dtype", "dp_rank", "window", "layers", "session_id", "attn_tp_rank")
    KIND_FIELD_NUMBER: _ClassVar[int]
    BASE_PTR_FIELD_NUMBER: _ClassVar[int]
    ITEM_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DP_RANK_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTN_TP_RANK_FIELD_NUMBER: _ClassVar[int]
    kind: str
    base_ptr: int
    item_bytes: int
    num_items: int
    dtype: str
    dp_rank: int
    window: int
    layers: _containers.RepeatedScalarFieldContainer[int]
    session_id: str
    attn_tp_rank: int
    def __init__(self, kind: _Optional[str] = ..., base_ptr: _Optional[int] = ..., item_bytes: _Optional[int] = ..., num_items: _Optional[int] = ..., dtype: _Optional[str] = ..., dp_rank: _Optional[int] = ..., window: _Optional[int] = ..., layers: _Optional[_Iterable[int]] = ..., session_id: _Optional[str] = ..., attn_tp_rank: _Optional[int] = ...) -> None: ...

class MemoryLayout(_message.Message):
    __slots__ = ("node_id", "session_id", "protocol", "page_size", "model_fingerprint", "regions", "attn_tp_size")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    ATTN_TP_SIZE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    session_id: str
    protocol: str
    page_size: int
    model_fingerprint: str
    regions: _containers.RepeatedCompositeFieldContainer[MemoryRegion]
    attn_tp_size: int
    def __init__(self, node_id: _Optional[str] = ..., session_id: _Optional[str] = ..., protocol: _Optional[str] = ..., page_size: _Optional[int] = ..., model_fingerprint: _Optional[str] = ..., regions: _Optional[_Iterable[_Union[MemoryRegion, _Mapping]]] = ..., attn_tp_size: _Optional[int] = ...) -> None: ...

class HandshakeRequest(_message.Message):
    __slots__ = ("decode_layout",)
    DECODE_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    decode_layout: MemoryLayout
    def __init__(self, decode_layout: _Optional[_Union[MemoryLayout, _Mapping]] = ...) -> None: ...

class HandshakeResponse(_message.Message):
    __slots__ = ("prefill_layout",)
    PREFILL_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    prefill_layout: MemoryLayout
    def __init__(self, prefill_layout: _Optional[_Union[MemoryLayout, _Mapping]] = ...) -> None: ...

class ItemIds(_message.Message):
    __slots__ = ("kind", "ids")
    KIND_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, kind: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ...) -> None: ...

class PageRegistration(_message.Message):
    __slots__ = ("decode_node_id", "pools", "dp_rank", "cached_prefix_len")
    DECODE_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    DP_RANK_FIELD_NUMBER: _ClassVar[int]
    CACHED_PREFIX_LEN_FIELD_NUMBER: _ClassVar[int]
    decode_node_id: str
    pools: _containers.RepeatedCompositeFieldContainer[ItemIds]
    dp_rank: int
    cached_prefix_len: int
    def __init__(self, decode_node_id: _Optional[str] = ..., pools: _Optional[_Iterable[_Union[ItemIds, _Mapping]]] = ..., dp_rank: _Optional[int] = ..., cached_prefix_len: _Optional[int] = ...) -> None: ...

class PrefillRequest(_message.Message):
    __slots__ = ("rid", "token_ids", "sampling", "registration")
    RID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_FIELD_NUMBER: _ClassVar[int]
    rid: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: SamplingParams
    registration: PageRegistration
    def __init__(self, rid: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., registration: _Optional[_Union[PageRegistration, _Mapping]] = ...) -> None: ...

class PoolTransfer(_message.Message):
    __slots__ = ("kind", "items", "bytes", "entries")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    kind: str
    items: int
    bytes: int
    entries: int
    def __init__(self, kind: _Optional[str] = ..., items: _Optional[int] = ..., bytes: _Optional[int] = ..., entries: _Optional[int] = ...) -> None: ...

class TransferStats(_message.Message):
    __slots__ = ("items", "bytes", "batches", "entries", "seconds", "pools")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    items: int
    bytes: int
    batches: int
    entries: int
    seconds: float
    pools: _containers.RepeatedCompositeFieldContainer[PoolTransfer]
    def __init__(self, items: _Optional[int] = ..., bytes: _Optional[int] = ..., batches: _Optional[int] = ..., entries: _Optional[int] = ..., seconds: _Optional[float] = ..., pools: _Optional[_Iterable[_Union[PoolTransfer, _Mapping]]] = ...) -> None: ...

class PrefillResult(_message.Message):
    __slots__ = ("rid", "first_token", "queue_seconds", "prefill_seconds", "transfer")
    RID_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    rid: str
    first_token: int
    queue_seconds: float
    prefill_seconds: float
    transfer: TransferStats
    def __init__(self, rid: _Optional[str] = ..., first_token: _Optional[int] = ..., queue_seconds: _Optional[float] = ..., prefill_seconds: _Optional[float] = ..., transfer: _Optional[_Union[TransferStats, _Mapping]] = ...) -> None: ...

class AbortRequest(_message.Message):
    __slots__ = ("rid", "decode_node_id")
    RID_FIELD_NUMBER: _ClassVar[int]
    DECODE_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    rid: str
    decode_node_id: str
    def __init__(self, rid: _Optional[str] = ..., decode_node_id: _Optional[str] = ...) -> None: ...

class AbortResponse(_message.Message):
    __slots__ = ("found", "writes_drained", "transfer_failed")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    WRITES_DRAINED_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FAILED_FIELD_NUMBER: _ClassVar[int]
    found: bool
    writes_drained: bool
    transfer_failed: bool
    def __init__(self, found: _Optional[bool] = ..., writes_drained: _Optional[bool] = ..., transfer_failed: _Optional[bool] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("rid", "token_ids", "sampling", "prefill_addr")
    RID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    PREFILL_ADDR_FIELD_NUMBER: _ClassVar[int]
    rid: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: SamplingParams
    prefill_addr: str
    def __init__(self, rid: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., prefill_addr: _Optional[str] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("token_ids", "finish_reason", "prompt_tokens", "ttft_seconds", "prefilled_remotely", "transfer", "prefill_first_chunk_seconds", "prefill_node_seconds")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TTFT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PREFILLED_REMOTELY_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    PREFILL_FIRST_CHUNK_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_NODE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: str
    prompt_tokens: int
    ttft_seconds: float
    prefilled_remotely: bool
    transfer: TransferStats
    prefill_first_chunk_seconds: float
    prefill_node_seconds: float
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., ttft_seconds: _Optional[float] = ..., prefilled_remotely: _Optional[bool] = ..., transfer: _Optional[_Union[TransferStats, _Mapping]] = ..., prefill_first_chunk_seconds: _Optional[float] = ..., prefill_node_seconds: _Optional[float] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfoResponse(_message.Message):
    __slots__ = ("model_id", "context_length", "vocab_size", "tokenizer_json", "chat_template", "bos_token", "eos_token", "eos_token_ids", "role", "page_size")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_JSON_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    BOS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    context_length: int
    vocab_size: int
    tokenizer_json: str
    chat_template: str
    bos_token: str
    eos_token: str
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    role: str
    page_size: int
    def __init__(self, model_id: _Optional[str] = ..., context_length: _Optional[int] = ..., vocab_size: _Optional[int] = ..., tokenizer_json: _Optional[str] = ..., chat_template: _Optional[str] = ..., bos_token: _Optional[str] = ..., eos_token: _Optional[str] = ..., eos_token_ids: _Optional[_Iterable[int]] = ..., role: _Optional[str] = ..., page_size: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PoolStats(_message.Message):
    __slots__ = ("kind", "total", "free", "quarantined", "dp_rank", "cached")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    DP_RANK_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    kind: str
    total: int
    free: int
    quarantined: int
    dp_rank: int
    cached: int
    def __init__(self, kind: _Optional[str] = ..., total: _Optional[int] = ..., free: _Optional[int] = ..., quarantined: _Optional[int] = ..., dp_rank: _Optional[int] = ..., cached: _Optional[int] = ...) -> None: ...

class RankLoad(_message.Message):
    __slots__ = ("dp_rank", "waiting", "prefilling", "running", "remote_prefills")
    DP_RANK_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    PREFILLING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    REMOTE_PREFILLS_FIELD_NUMBER: _ClassVar[int]
    dp_rank: int
    waiting: int
    prefilling: int
    running: int
    remote_prefills: int
    def __init__(self, dp_rank: _Optional[int] = ..., waiting: _Optional[int] = ..., prefilling: _Optional[int] = ..., running: _Optional[int] = ..., remote_prefills: _Optional[int] = ...) -> None: ...

class NodeStats(_message.Message):
    __slots__ = ("role", "pools", "waiting", "prefilling", "transferring", "running", "inflight_transfers", "integrity_ok", "requests_total", "requests_aborted", "transfer_bytes_total", "transfer_batches_total", "draining", "prefix_cache", "ranks")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    PREFILLING_FIELD_NUMBER: _ClassVar[int]
    TRANSFERRING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    INTEGRITY_OK_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_ABORTED_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_BATCHES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    role: str
    pools: _containers.RepeatedCompositeFieldContainer[PoolStats]
    waiting: int
    prefilling: int
    transferring: int
    running: int
    inflight_transfers: int
    integrity_ok: bool
    requests_total: int
    requests_aborted: int
    transfer_bytes_total: int
    transfer_batches_total: int
    draining: bool
    prefix_cache: PrefixCacheStats
    ranks: _containers.RepeatedCompositeFieldContainer[RankLoad]
    def __init__(self, role: _Optional[str] = ..., pools: _Optional[_Iterable[_Union[PoolStats, _Mapping]]] = ..., waiting: _Optional[int] = ..., prefilling: _Optional[int] = ..., transferring: _Optional[int] = ..., running: _Optional[int] = ..., inflight_transfers: _Optional[int] = ..., integrity_ok: _Optional[bool] = ..., requests_total: _Optional[int] = ..., requests_aborted: _Optional[int] = ..., transfer_bytes_total: _Optional[int] = ..., transfer_batches_total: _Optional[int] = ..., draining: _Optional[bool] = ..., prefix_cache: _Optional[_Union[PrefixCacheStats, _Mapping]] = ..., ranks: _Optional[_Iterable[_Union[RankLoad, _Mapping]]] = ...) -> None: ...

class PrefixCacheStats(_message.Message):
    __slots__ = ("enabled", "hit_tokens", "evicted_pages", "cached_pages")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    HIT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EVICTED_PAGES_FIELD_NUMBER: _ClassVar[int]
    CACHED_PAGES_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    hit_tokens: int
    evicted_pages: int
    cached_pages: int
    def __init__(self, enabled: _Optional[bool] = ..., hit_tokens: _Optional[int] = ..., evicted_pages: _Optional[int] = ..., cached_pages: _Optional[int] = ...) -> None: ...
