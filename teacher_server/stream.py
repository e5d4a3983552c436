"""LabelStream: a long-lived camera connection, one answer per frame, in order.

The stream counts as one call of the server and of its camera from the moment
it opens (with tokens the camera is the token's; without, the first frame's,
and until then only the server-wide count and the reserve apply). A stream
that sends no frame within `first_frame_s` of opening, or none for
`stream_idle_s` later, is ended with UNAVAILABLE, so opened-and-forgotten
streams give their slot back. Each frame passes its camera's pacing (bucket,
hints) before it is decoded; a refused or bad frame gets an inline `error`
answer and the stream goes on.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Iterator, Optional

import grpc

from protos import teacher_pb2
from teacher_server.jobs import Job
from teacher_server.wire import GARBAGE, UNAUTHENTICATED, Failure, UndecodableRequest, check_fields, error_response, label_response

log = logging.getLogger(__name__)


def serve_stream(servicer: Any, request_iterator: Iterator[teacher_pb2.LabelRequest],
                 context: grpc.ServicerContext) -> Iterator[teacher_pb2.LabelResponse]:
    """The LabelStream handler's generator (see the module docstring); `servicer` is the TeacherServicer
    whose checks (stream_caller, open_call, bind, knock, submit, wait, abort, hold_back) each frame passes."""
    try:
        camera = servicer.stream_caller(context)
        ticket = servicer.open_call(camera, stream=True)
    except Failure as failure:
        servicer.abort(context, failure)
    if ticket is not None:
        context.add_callback(ticket.release)
    context.add_callback(servicer.forget_idle)
    bound_by_token = camera is not None
    # Items: ("job", request, job, t0, decode_s) | ("error", request, Failure) | ("end", Failure | None)
    pending: queue.Queue = queue.Queue(maxsize=max(2, servicer.batcher.max_queue))
    live_jobs: set[Job] = set()
    lock = threading.Lock()
    opened = time.monotonic()
    last_frame: list[Optional[float]] = [None]

    def on_done() -> None:
        with lock:
            jobs = list(live_jobs)
        for job in jobs:
            servicer.batcher.cancel(job)

    context.add_callback(on_done)

    def put(item: tuple) -> bool:
        """Hand an item to the responder; False once the call is over (never block forever)."""
        while context.is_active():
            try:
                pending.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        nonlocal camera
        try:
            for request in request_iterator:
                t0 = time.perf_counter()
                last_frame[0] = time.monotonic()
                if isinstance(request, UndecodableRequest):
                    servicer.count_garbage(request)
                    if not put(("error", request, Failure(grpc.StatusCode.INVALID_ARGUMENT, GARBAGE))):
                        return
                    continue
                try:
                    check_fields(request)
                    if bound_by_token and request.camera_id != camera:
                        put(("end", Failure(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)))
                        return
                    if camera is None:
                        try:
                            servicer.bind(ticket, request.camera_id)
                        except Failure as failure:  # the camera is at its share: this stream cannot be its
                            put(("end", failure))
                            return
                        camera = request.camera_id
                    if request.camera_id != camera:
                        raise Failure(grpc.StatusCode.INVALID_ARGUMENT,
                                      "a stream carries one camera's frames; open another stream for another camera_id")
                    servicer.knock(camera)
                    job, decode_s = servicer.submit(request, context, camera)
                except Failure as failure:
                    if failure.code == grpc.StatusCode.UNAVAILABLE:
                        put(("end", failure))
                        return
                    if not put(("error", request, failure)):
                        return
                    continue
                with lock:
                    live_jobs.add(job)
                if not put(("job", request, job, t0, decode_s)):
                    servicer.batcher.cancel(job)
                    return
        except Exception:  # noqa: BLE001 - the client went away; the stream is over
            log.debug("stream reader ended", exc_info=True)
        put(("end", None))

    threading.Thread(target=read, name="teacher-stream-reader", daemon=True).start()
    while True:
        try:
            item = pending.get(timeout=0.25)
        except queue.Empty:
            if not context.is_active():
                return
            with lock:
                idle = not live_jobs
            if not (idle and pending.empty()):
                continue
            if servicer.shutting_down.is_set():
                # An idle camera connection must not hold up a graceful shutdown.
                context.abort(grpc.StatusCode.UNAVAILABLE, "the teacher is shutting down; reconnect to another server")
            now = time.monotonic()
            if last_frame[0] is None and servicer.first_frame_s is not None and now - opened > servicer.first_frame_s:
                _end_idle(context, ticket, f"stream carried no frame for {servicer.first_frame_s:g} s after it opened; "
                                           "open one when there is a frame to send")
            if (last_frame[0] is not None and servicer.stream_idle_s is not None
                    and now - last_frame[0] > servicer.stream_idle_s):
                _end_idle(context, ticket, f"stream carried no frame for {servicer.stream_idle_s:g} s; "
                                           "open a new one when there is work")
            continue
        kind = item[0]
        if kind == "end":
            if item[1] is not None:
                servicer.abort(context, item[1])
            return
        if kind == "error":
            _, request, failure = item
            servicer.hold_back(failure, context)
            servicer.metrics.observe_request(failure.code.name)
            yield error_response(request, failure)
            continue
        _, request, job, t0, decode_s = item
        try:
            result = servicer.wait(job, context, camera or request.camera_id)
        except Failure as failure:
            servicer.metrics.observe_request(failure.code.name)
            yield error_response(request, failure)
            continue
        finally:
            with lock:
                live_jobs.discard(job)
        response = label_response(request, job, result, t0, decode_s)
        servicer.observe_delivery(context, time.perf_counter() - t0)
        last_frame[0] = time.monotonic()
        yield response


def _end_idle(context: grpc.ServicerContext, ticket: object, message: str) -> None:
    if ticket is not None:
        ticket.release()  # type: ignore[attr-defined]
    context.abort(grpc.StatusCode.UNAVAILABLE, message)
