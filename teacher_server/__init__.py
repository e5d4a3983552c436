"""The remote teacher: a gRPC server that labels frames for many cameras.

Rooms, in a frame's order: `auth.py` (who is calling: the token's camera),
`pacing.py` + `limits.py` (how often and how much one camera may ask),
`wire.py` + `codec.py` (the request's fields and image, checked before
decoding), `admission.py` (only what can be answered by its deadline),
`scheduling.py` + `batcher.py` (whose frame goes next, in batches; `jobs.py`
is what waits), `labeler.py` + `semantic.py` over `backends/` (the model, and
its instances -> the camera's class groups, as core.labels.TeacherLabels),
`service.py` + `stream.py` (the thin gRPC servicer), `server.py`
(`start_server`), `metrics.py`, `cli.py`; `ray_*.py` serve the same servicer
on a Ray fleet. Importing this package loads nothing heavy.
"""
