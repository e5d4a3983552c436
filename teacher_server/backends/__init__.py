"""Teacher models behind one interface, loaded by name (see registry.py)."""
from teacher_server.backends.base import BackendOutput, BackendUnavailable, TeacherBackend
from teacher_server.backends.registry import backend_names, load_backend

__all__ = ["BackendOutput", "BackendUnavailable", "TeacherBackend", "backend_names", "load_backend"]
