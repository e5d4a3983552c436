from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RawImage(_message.Message):
    __slots__ = ("data", "height", "width", "channels")
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    height: int
    width: int
    channels: int
    def __init__(self, data: _Optional[bytes] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class LabelRequest(_message.Message):
    __slots__ = ("camera_id", "frame_index", "encoded", "raw", "groups", "score_threshold", "need")
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NEED_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    frame_index: int
    encoded: bytes
    raw: RawImage
    groups: _containers.RepeatedScalarFieldContainer[str]
    score_threshold: float
    need: StudentNeed
    def __init__(self, camera_id: _Optional[str] = ..., frame_index: _Optional[int] = ..., encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ..., groups: _Optional[_Iterable[str]] = ..., score_threshold: _Optional[float] = ..., need: _Optional[_Union[StudentNeed, _Mapping]] = ...) -> None: ...

class StudentNeed(_message.Message):
    __slots__ = ("accuracy", "threshold", "failed", "stride", "frames_since_teacher")
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SINCE_TEACHER_FIELD_NUMBER: _ClassVar[int]
    accuracy: float
    threshold: float
    failed: bool
    stride: int
    frames_since_teacher: int
    def __init__(self, accuracy: _Optional[float] = ..., threshold: _Optional[float] = ..., failed: _Optional[bool] = ..., stride: _Optional[int] = ..., frames_since_teacher: _Optional[int] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x0", "y0", "x1", "y1")
    X0_FIELD_NUMBER: _ClassVar[int]
    Y0_FIELD_NUMBER: _ClassVar[int]
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    x0: float
    y0: float
    x1: float
    y1: float
    def __init__(self, x0: _Optional[float] = ..., y0: _Optional[float] = ..., x1: _Optional[float] = ..., y1: _Optional[float] = ...) -> None: ...

class Instance(_message.Message):
    __slots__ = ("box", "group", "group_index", "score", "class_name")
    BOX_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    GROUP_INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    box: Box
    group: str
    group_index: int
    score: float
    class_name: str
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., group: _Optional[str] = ..., group_index: _Optional[int] = ..., score: _Optional[float] = ..., class_name: _Optional[str] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("decode_ms", "queue_ms", "inference_ms", "postprocess_ms", "encode_ms", "total_ms", "batch_size")
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    POSTPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    decode_ms: float
    queue_ms: float
    inference_ms: float
    postprocess_ms: float
    encode_ms: float
    total_ms: float
    batch_size: int
    def __init__(self, decode_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., postprocess_ms: _Optional[float] = ..., encode_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "retry_after_ms")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    retry_after_ms: int
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class LabelResponse(_message.Message):
    __slots__ = ("camera_id", "frame_index", "height", "width", "label_map_png", "groups", "instances", "model_name", "model_version", "timings", "error", "stride_stretch")
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    LABEL_MAP_PNG_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STRIDE_STRETCH_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    frame_index: int
    height: int
    width: int
    label_map_png: bytes
    groups: _containers.RepeatedScalarFieldContainer[str]
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    model_name: str
    model_version: str
    timings: Timings
    error: Error
    stride_stretch: float
    def __init__(self, camera_id: _Optional[str] = ..., frame_index: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., label_map_png: _Optional[bytes] = ..., groups: _Optional[_Iterable[str]] = ..., instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., stride_stretch: _Optional[float] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GroupInfo(_message.Message):
    __slots__ = ("name", "classes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    name: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "groups", "default_score_threshold", "max_batch_size", "max_queue", "max_message_bytes")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    groups: _containers.RepeatedCompositeFieldContainer[GroupInfo]
    default_score_threshold: float
    max_batch_size: int
    max_queue: int
    max_message_bytes: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., groups: _Optional[_Iterable[_Union[GroupInfo, _Mapping]]] = ..., default_score_threshold: _Optional[float] = ..., max_batch_size: _Optional[int] = ..., max_queue: _Optional[int] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...
