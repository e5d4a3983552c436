"""Per-camera bearer tokens.

Each camera gets its own secret, so a leaked token exposes one camera, and an
operator can revoke it without touching the others. A call must carry
`authorization: Bearer <token>` matching its camera_id; anything else gets
UNAUTHENTICATED and no other information.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union

#: A token listed for this camera id is accepted for every camera (an operator's tool).
ANY_CAMERA = "*"

Metadata = Sequence[Tuple[str, Union[str, bytes]]]


def load_tokens(path: Union[str, Path]) -> dict[str, str]:
    """Read camera -> token from a file.

    Either JSON ({"cam0": "secret", ...}) or text, one `camera_id token` per
    line, with `#` comments and blank lines ignored.
    """
    text = Path(path).read_text()
    if text.lstrip().startswith("{"):
        data = json.loads(text)
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise ValueError(f"{path}: expected a JSON object of camera id -> token strings")
        tokens = dict(data)
    else:
        tokens = {}
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{path}:{number}: expected 'camera_id token', got {line!r}")
            tokens[parts[0]] = parts[1]
    for camera, token in tokens.items():
        if len(token) < 8:
            raise ValueError(f"{path}: the token for camera {camera!r} is shorter than 8 characters; use a long random one")
    if not tokens:
        raise ValueError(f"{path}: no tokens found")
    return tokens


def bearer_token(metadata: Optional[Metadata]) -> Optional[str]:
    """The token of an `authorization: Bearer <token>` entry, if any."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class TokenAuth:
    """Checks that a call's bearer token belongs to the camera it speaks for.

    `identify` answers from the token alone, before any message is read, so
    limits are bound to the camera the token belongs to when a call opens.
    """

    def __init__(self, tokens: Mapping[str, str]) -> None:
        if not tokens:
            raise ValueError("TokenAuth needs at least one camera token")
        self._tokens = {camera: token.encode() for camera, token in tokens.items()}
        # Looked up by digest: the dictionary's hashing then reveals nothing about the tokens' bytes.
        self._by_digest = {_digest(token): camera for camera, token in self._tokens.items()}
        if len(self._by_digest) < len(self._tokens):
            raise ValueError("two cameras share a token; give each camera its own (a token names its camera)")

    def identify(self, metadata: Optional[Metadata]) -> Optional[str]:
        """The camera id the call's token belongs to (ANY_CAMERA for the operator's token), None without a valid one."""
        token = bearer_token(metadata)
        if token is None:
            return None
        given = token.encode()
        camera = self._by_digest.get(_digest(given))
        if camera is None or not hmac.compare_digest(given, self._tokens[camera]):
            return None
        return camera

    def allows(self, metadata: Optional[Metadata], camera_id: Optional[str]) -> bool:
        """True if the token matches `camera_id` (or any camera's, when camera_id is None)."""
        camera = self.identify(metadata)
        return camera is not None and (camera_id is None or camera in (camera_id, ANY_CAMERA))


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()
