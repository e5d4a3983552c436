"""The remote teacher: a gRPC server that labels frames for many cameras.

Rooms: `backends/` (models behind one interface), `groups.py` + `semantic.py`
(COCO instances -> the camera's class groups), `labeler.py` (the in-process
teacher), `batcher.py` (batching, fairness, backpressure), `service.py`
(the thin gRPC servicer), `server.py` (`start_server`), `cli.py`, `bench.py`.
Importing this package loads nothing heavy.
"""
