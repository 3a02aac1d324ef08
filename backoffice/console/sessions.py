"""Server-side sessions, in memory: the cookie carries only a random session id; the API token it was
exchanged for stays here as a ``Secret``. A session ends after ``idle_seconds`` without a request, at the
latest ``max_seconds`` after sign-in, at sign-out, or when the process restarts (everyone signs in again).

Sessions are keyed by a hash of their id, so the table holds no cookie value a memory dump could replay.
Each also holds the one-time downloads of device credentials (the secret leaves in exactly one response)
and the notices shown on the next page."""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from signalhub.protocol.secret import Secret
from signalhub.v1 import backoffice_pb2 as pb

DOWNLOAD_SECONDS = 600  # a credentials file not downloaded within this is gone
MAX_DOWNLOADS = 5  # per session: registering more drops the oldest
MAX_NOTICES = 10


@dataclass(frozen=True)
class Download:
    """A file the session may download once: a device's credentials."""

    filename: str
    content: Secret
    expires: float


@dataclass
class Session:
    """One signed-in person: who (as the back office answered GetCurrentUser), the token every call carries,
    the CSRF token each form and htmx request must send back."""

    user_id: str
    email: str
    role: int  # pb.Role
    token: Secret
    csrf_token: str
    created: float
    last_used: float
    notices: list[str] = field(default_factory=list)
    downloads: dict[str, Download] = field(default_factory=dict)

    @property
    def is_admin(self) -> bool:
        return self.role == pb.ROLE_ADMIN

    def notify(self, text: str) -> None:
        """A line to show on the next page rendered for this session (after a redirect)."""
        self.notices = [*self.notices, text][-MAX_NOTICES:]

    def take_notices(self) -> list[str]:
        taken, self.notices = self.notices, []
        return taken

    def offer_download(self, filename: str, content: bytes, now: float) -> str:
        """Hold ``content`` for one download; returns the id of the link that fetches it."""
        download_id = secrets.token_urlsafe(16)
        self.downloads = {k: d for k, d in self.downloads.items() if d.expires > now}
        while len(self.downloads) >= MAX_DOWNLOADS:
            del self.downloads[next(iter(self.downloads))]
        self.downloads[download_id] = Download(filename, Secret(content), now + DOWNLOAD_SECONDS)
        return download_id

    def take_download(self, download_id: str, now: float) -> Download | None:
        """The file behind ``download_id``, forgotten as it is handed out; None when taken or expired."""
        found = self.downloads.pop(download_id, None)
        return found if found is not None and found.expires > now else None


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    """Every live session of this process; ``clock`` is monotonic seconds (tests pass their own)."""

    def __init__(
        self,
        idle_seconds: int,
        max_seconds: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        capacity: int = 10_000,
    ) -> None:
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self.clock = clock
        self.capacity = capacity
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, token: Secret, user: pb.User) -> tuple[str, Session]:
        """A new session for ``user`` holding ``token``; returns the cookie value (its id) and the session.
        Always a new id: a session id set before sign-in is never promoted (no fixation)."""
        now = self.clock()
        self._purge(now)
        while len(self._sessions) >= self.capacity:  # bounded memory: the least recently used goes first
            oldest = min(self._sessions, key=lambda k: self._sessions[k].last_used)
            del self._sessions[oldest]
        session_id = secrets.token_urlsafe(32)
        session = Session(
            user_id=user.id,
            email=user.email,
            role=user.role,
            token=token,
            csrf_token=secrets.token_urlsafe(32),
            created=now,
            last_used=now,
        )
        self._sessions[_key(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None, *, touch: bool = True) -> Session | None:
        """The live session behind a cookie value, marked used now unless ``touch`` is false (a page polling
        by itself is no sign of a person); None (and forgotten) when it expired."""
        if not session_id:
            return None
        key = _key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock()
        if self._expired(session, now):
            del self._sessions[key]
            return None
        if touch:
            session.last_used = now
        return session

    def delete(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(_key(session_id), None)

    def remaining_seconds(self, session: Session) -> int:
        """Seconds until the session's absolute end: the cookie's Max-Age."""
        return max(0, math.ceil(session.created + self.max_seconds - self.clock()))

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.last_used >= self.idle_seconds or now - session.created >= self.max_seconds

    def _purge(self, now: float) -> None:
        self._sessions = {k: s for k, s in self._sessions.items() if not self._expired(s, now)}
