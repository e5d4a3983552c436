"""`sdk.connect(teacher_url).segment(stream)`: the whole system behind one call.

A Session owns the student (an artifact directory and its trainer), the
teacher connection (remote, or an embedded server in this process), and
optionally a state directory that keeps what the student learnt across
restarts.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Optional

from core.config import DistillConfig
from edge_agent.agent import DistillationAgent, FrameResult
from sdk.artifact_cache import default_artifacts
from sdk.embedded import embedded_teacher

log = logging.getLogger(__name__)


@dataclass
class SessionOptions:
    classes: tuple[str, ...] = ("person",)
    width: float = 0.5
    #: Where the student's weights start: "default" (shipped pre-trained), "none" (random) or a checkpoint path.
    init: str = "default"
    artifacts: Optional[Path] = None
    backend: str = "ort"
    device: str = "auto"
    threads: Optional[int] = None
    state_dir: Optional[Path] = None
    #: Snapshot the student into state_dir this often (a background writer; the frame goes on), and
    #: also right after its first teacher update (see Session._maybe_save).
    save_every_s: float = 60.0
    camera_id: str = "cam0"
    token: Optional[str] = None
    root_cert: Optional[Path] = None
    teacher_timeout_s: float = 30.0
    #: Ray Serve application of a `--engine ray` teacher; None: sent ("jitnet-teacher") only if its proxy asks.
    application: Optional[str] = None
    #: Raise at connect() when the teacher does not answer; False = run degraded.
    strict: bool = True
    #: A live source with no frame for this long is reopened (exponential back-off).
    stall_s: float = 5.0
    #: Reconnect attempts in a row before a live source ends with StreamError; None = forever.
    max_reconnects: Optional[int] = None
    #: Longest side of the frames sent to the teacher (labels are upsampled back); None = full size.
    #: 640 is the YOLO-seg teachers' own input size: they letterbox every frame to it, so larger frames
    #: cost bytes and buy the teacher nothing (a rule from the model, not from one clip; README, Bandwidth).
    teacher_max_side: Optional[int] = 640
    jpeg_quality: int = 90
    #: Serve Prometheus metrics and /healthz on this port (0 = any free port; see session.metrics.url).
    metrics_port: Optional[int] = None
    #: Where they listen: this machine only unless told ("0.0.0.0" for a Prometheus elsewhere).
    metrics_host: str = "127.0.0.1"


class Session:
    """A connected student + teacher.  Use as a context manager, or call close()."""

    def __init__(self, teacher_url: Optional[str], config: DistillConfig, options: SessionOptions):
        from edge_agent.trainer import load_trainer

        self.config, self.options = config, options
        self._server = None
        self._writer = None
        self.teacher = None
        #: Where the student's weights came from, for the commands' output.
        self.start = ""
        self._state_lock = None
        self.metrics = None
        self.stream = None
        self.teacher_info: dict[str, Any] = {}
        self.url = teacher_url
        try:
            backend = embedded_teacher(teacher_url)
            if backend is not None:
                self.url = self._start_embedded(backend)
            artifacts = options.artifacts or default_artifacts(options.classes, options.width, options.init)
            if options.artifacts:
                self.start = f"the artifacts in {options.artifacts}"
            else:
                from export.pretrained import describe_start, resolve_init

                self.start = describe_start(resolve_init(options.init, options.width))
            self.trainer = load_trainer(artifacts, backend=options.backend, device=options.device, threads=options.threads)
            if options.state_dir is not None:
                from edge_agent.state import StateLock

                self._state_lock = StateLock(options.state_dir).acquire()  # one agent per state dir
                self.trainer.restore(options.state_dir)
            if options.metrics_port is not None:
                from sdk.agent_metrics import AgentMetrics

                self.metrics = AgentMetrics(camera_id=options.camera_id).serve(options.metrics_port, options.metrics_host)
            if self.url:
                self._connect_teacher()
        except BaseException:
            self.close()  # an embedded teacher started above must not outlive a failed connect
            raise
        self._last_save = time.monotonic()
        self._steps_at_start = self.trainer.steps  # what a restore brought back is on disk already
        self._lesson_saved = False

    def _start_embedded(self, backend: str) -> str:
        from teacher_server.server import start_server

        self._server = start_server(backend, port=0, max_batch=1)
        log.info("embedded teacher %s on %s", backend, self._server.url)
        return self._server.url

    def _connect_teacher(self) -> None:
        from edge_agent.teacher_client import TeacherClient, TeacherError

        o = self.options
        self.teacher = TeacherClient(self.url, token=o.token, root_cert=o.root_cert, camera_id=o.camera_id,
                                     max_side=o.teacher_max_side, jpeg_quality=o.jpeg_quality,
                                     timeout_s=o.teacher_timeout_s, application=o.application)
        try:
            info = self.teacher.info(deadline_s=min(5.0, o.teacher_timeout_s))
            self.teacher_info = {"model": info.model_name, "version": info.model_version}
        except TeacherError as exc:
            if o.strict:  # __init__ closes the session on the way out
                raise ConnectionError(
                    f"teacher at {self.url} does not answer ({exc}); check the address and that "
                    "`jitnet teacher` runs there, or connect with strict=False to segment with the "
                    "current student and keep retrying the teacher"
                ) from exc
            log.warning("teacher at %s does not answer (%s); running degraded, retrying in the background", self.url, exc)

    # -- the main call ---------------------------------------------------------
    def segment(
        self,
        stream: Any,
        *,
        live: Optional[bool] = None,
        max_frames: Optional[int] = None,
        **stream_options: Any,
    ) -> Iterator[FrameResult]:
        """Segment every frame of ``stream`` (path, camera index, URL, or iterable of RGB frames).

        A live source that drops comes back (``stall_s``, ``max_reconnects``) with
        this same student and controller; ``stream_options`` go to open_stream (fps, resize, ...).
        """
        from sdk.streams import open_stream

        stream_options.setdefault("stall_s", self.options.stall_s)
        stream_options.setdefault("max_reconnects", self.options.max_reconnects)
        with open_stream(stream, live=live, max_frames=max_frames, **stream_options) as frames:
            self.stream = frames
            if self.metrics is not None:
                self.metrics.attach_stream(frames)
            self.stream_info = {"description": frames.description, "fps": frames.fps, "live": frames.live,
                                "frame_count": frames.frame_count}
            self.agent = DistillationAgent(self.trainer, self.teacher, self.config, live=frames.live)
            if self.metrics is not None:
                self.metrics.attach_counters(self.agent.counters)
            self.frames_stats = frames.stats
            try:
                for frame in frames:
                    result = self.agent.process(frame.index, frame.image_rgb)
                    result.source_state, result.reconnects = frames.state, frames.reconnects
                    result.timings["latency_ms"] = (time.monotonic() - frame.captured_at) * 1e3
                    self._maybe_save()
                    yield result
            finally:
                self.save()

    def _maybe_save(self) -> None:
        """The periodic snapshot: copied here, written by a background thread (the frame goes on).

        Every ``save_every_s`` seconds, and once as soon as the student has
        taken its first training steps in this session.  The first lesson is
        the most valuable one (it adapts a generic student to this scene) and
        the first minute the likeliest to be cut short (a device being
        installed, a flaky supply), so it is not left to wait for the timer;
        after that the cost stays at one snapshot per interval.
        """
        if self.options.state_dir is None:
            return
        learnt = self.trainer.steps > self._steps_at_start
        first_lesson = learnt and not self._lesson_saved
        if not first_lesson and time.monotonic() - self._last_save < self.options.save_every_s:
            return
        from edge_agent.student import SnapshotWriter

        if self._writer is None:
            self._writer = SnapshotWriter()
        if self._writer.busy():  # a slow disk: never queue a second copy behind the first
            return
        self._last_save = time.monotonic()
        self._lesson_saved = self._lesson_saved or learnt
        self._writer.save(self.trainer, self.options.state_dir)

    def save(self) -> Optional[Path]:
        """Snapshot the student now (no-op without a state_dir)."""
        if self.options.state_dir is None:
            return None
        if self._writer is not None:
            self._writer.flush()  # snapshots publish in order: the queued one first
        self._last_save = time.monotonic()
        path = self.trainer.save(self.options.state_dir)
        log.info("saved student state to %s", path)
        return path

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        if self._state_lock is not None:
            self._state_lock.release()
            self._state_lock = None
        if self.teacher is not None:
            self.teacher.close()
            self.teacher = None
        if self._server is not None:
            self._server.stop(grace=2.0)
            self._server = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def connect(
    teacher_url: Optional[str] = None,
    *,
    threshold: Optional[float] = None,
    config: Optional[DistillConfig] = None,
    **options: Any,
) -> Session:
    """Connect a student to a teacher.

    ``teacher_url``: ``grpc://host:port`` (``grpcs://`` for TLS), or
    ``"embedded"`` (yolov7-seg, sdk.embedded.EMBEDDED_TEACHER) / ``"embedded:yolov5s-seg"`` to run the
    teacher in this process, or None for a student that never learns.  ``options`` are the
    fields of :class:`SessionOptions` (classes, width, artifacts, backend,
    state_dir, token, strict, ...).  With ``strict=True`` (default) an
    unreachable teacher raises ConnectionError here; with ``strict=False`` the
    session segments with its current student and keeps retrying.
    ``config`` holds the paper's knobs (:class:`core.config.DistillConfig`);
    ``threshold``, when given, overrides its accuracy threshold.
    """
    config = config or DistillConfig()
    if threshold is not None:  # a shortcut for the one knob everyone sets; it wins only when given
        config = replace(config, accuracy_threshold=threshold)
    unknown = set(options) - set(SessionOptions.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}; see sdk.session.SessionOptions")
    opts = SessionOptions(**options)
    if not opts.save_every_s > 0:
        raise ValueError(f"save_every_s must be > 0 seconds, got {opts.save_every_s}")
    if isinstance(opts.classes, str):
        opts.classes = tuple(c.strip() for c in opts.classes.split(",") if c.strip())
    opts.classes = tuple(opts.classes)
    return Session(teacher_url, config, opts)
