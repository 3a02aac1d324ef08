"""Server-side sessions: the cookie value is only a key, the token stays a Secret, a session ends when
idle, at its absolute end, on sign-out, or when the store is full; a credentials download works once."""

from __future__ import annotations

from backoffice.console.sessions import DOWNLOAD_SECONDS, MAX_DOWNLOADS, SessionStore
from signalhub.protocol.secret import Secret
from signalhub.v1 import backoffice_pb2 as pb

TOKEN = "sht_" + "T" * 43
USER = pb.User(id="6f8c1f3e-0000-4000-8000-000000000001", email="a@example.com", role=pb.ROLE_USER)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store(clock: Clock, **options: int) -> SessionStore:
    return SessionStore(
        options.get("idle", 60), options.get("lifetime", 600), clock=clock, capacity=options.get("capacity", 100)
    )


def test_a_session_is_found_by_its_cookie_and_keeps_the_token_secret() -> None:
    sessions = store(Clock())
    cookie, session = sessions.create(Secret(TOKEN.encode()), USER)
    assert sessions.get(cookie) is session
    assert (session.user_id, session.email, session.is_admin) == (USER.id, USER.email, False)
    assert session.token.reveal() == TOKEN.encode() and TOKEN not in repr(session)
    assert TOKEN not in cookie and len(cookie) >= 40
    assert sessions.get("not-a-session") is None and sessions.get(None) is None
    again, other = sessions.create(Secret(TOKEN.encode()), USER)
    assert again != cookie and other.csrf_token != session.csrf_token  # every sign-in: a new id and token


def test_an_idle_session_ends() -> None:
    clock = Clock()
    sessions = store(clock, idle=60, lifetime=600)
    cookie, _ = sessions.create(Secret(TOKEN.encode()), USER)
    clock.now += 59
    assert sessions.get(cookie) is not None  # used: the idle time starts again
    clock.now += 59
    assert sessions.get(cookie) is not None
    clock.now += 60
    assert sessions.get(cookie) is None
    assert len(sessions) == 0


def test_a_session_in_use_still_ends_at_its_absolute_end() -> None:
    clock = Clock()
    sessions = store(clock, idle=60, lifetime=600)
    cookie, session = sessions.create(Secret(TOKEN.encode()), USER)
    assert sessions.remaining_seconds(session) == 600
    while clock.now + 50 < 1000 + 600:
        clock.now += 50
        assert sessions.get(cookie) is not None
    clock.now = 1000 + 600
    assert sessions.get(cookie) is None


def test_signing_out_deletes_the_session() -> None:
    sessions = store(Clock())
    cookie, _ = sessions.create(Secret(TOKEN.encode()), USER)
    sessions.delete(cookie)
    assert sessions.get(cookie) is None


def test_a_full_store_drops_the_least_recently_used_session() -> None:
    clock = Clock()
    sessions = store(clock, capacity=2)
    first, _ = sessions.create(Secret(b"a"), USER)
    clock.now += 1
    second, _ = sessions.create(Secret(b"b"), USER)
    clock.now += 1
    assert sessions.get(first) is not None  # used: now the second is the least recent
    clock.now += 1
    third, _ = sessions.create(Secret(b"c"), USER)
    assert len(sessions) == 2
    assert sessions.get(second) is None and sessions.get(first) is not None and sessions.get(third) is not None


def test_a_download_is_handed_out_once_and_not_after_it_expired() -> None:
    clock = Clock()
    _, session = store(clock).create(Secret(TOKEN.encode()), USER)
    download_id = session.offer_download("creds.json", b'{"device_secret": "x"}', clock.now)
    found = session.take_download(download_id, clock.now)
    assert found is not None and found.content.reveal() == b'{"device_secret": "x"}'
    assert "device_secret" not in repr(found)
    assert session.take_download(download_id, clock.now) is None
    late = session.offer_download("creds.json", b"{}", clock.now)
    assert session.take_download(late, clock.now + DOWNLOAD_SECONDS) is None
    ids = [session.offer_download(f"{n}.json", b"{}", clock.now) for n in range(MAX_DOWNLOADS + 1)]
    assert session.take_download(ids[0], clock.now) is None  # the oldest made room
    assert session.take_download(ids[-1], clock.now) is not None


def test_notices_are_shown_once() -> None:
    _, session = store(Clock()).create(Secret(TOKEN.encode()), USER)
    session.notify("saved")
    assert session.take_notices() == ["saved"]
    assert session.take_notices() == []


def test_a_page_polling_by_itself_does_not_keep_the_session_from_going_idle() -> None:
    clock = Clock()
    sessions = store(clock, idle=60, lifetime=600)
    cookie, _ = sessions.create(Secret(TOKEN.encode()), USER)
    for _ in range(5):
        clock.now += 11
        assert sessions.get(cookie, touch=False) is not None
    clock.now += 5
    assert sessions.get(cookie, touch=False) is None
