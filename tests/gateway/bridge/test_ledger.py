"""The ledger (gateway/bridge/ledger.py): one device's, owner-only whatever the umask, pruned only of
instructions that are finished and receipted."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.bridge import BridgeClient, Ledger, LedgerError, OutFrame
from gateway.bridge.ledger import delivery_subject
from tests.gateway.bridge.scripted import Rig, paper


async def test_ledger_of_another_device_is_refused(rig: Rig) -> None:
    client = await rig.connect(paper())
    await rig.stop(client)
    stranger = BridgeClient(rig.config(device_id=str(uuid.uuid4())), rig.secret, paper())
    with pytest.raises(LedgerError, match="belongs to device"):
        await stranger.run()


def test_ledger_prunes_only_finished_and_receipted_instructions(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db", "device-1")
    ledger.open()
    try:
        for name in ("old-done", "old-unreceipted", "old-open", "new-done"):
            ack = OutFrame(f"ack-{name}", delivery_subject(name), b"")
            assert ledger.record_delivery(name, b"", ack).new
            ledger.receipted([ack.frame_id])
        assert not ledger.record_delivery("old-done", b"", OutFrame("again", "x", b"")).new
        for name in ("old-done", "old-unreceipted", "new-done"):
            assert ledger.claim_delivery(name)
            frame = OutFrame(f"fill-{name}", delivery_subject(name), b"")
            ledger.finish_delivery(name, fill=None, reason="test", frames=[frame])
            if name != "old-unreceipted":
                ledger.receipted([frame.frame_id])
        ledger.db.execute("UPDATE deliveries SET updated_at = '2000-01-01' WHERE delivery_id LIKE 'old-%'")
        assert ledger.prune(timedelta(days=30)) == 1
        kept = {row[0] for row in ledger.db.execute("SELECT delivery_id FROM deliveries")}
        assert kept == {"old-unreceipted", "old-open", "new-done"}
    finally:
        ledger.close()


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_ledger_files_are_owner_only_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "state" / "ledger.db"
    previous = os.umask(umask)
    try:
        ledger = Ledger(path, "device-1")
        ledger.open()
        try:
            ack = OutFrame("ack-1", delivery_subject("d1"), b"")
            assert ledger.record_delivery("d1", b"", ack).new  # a write, so the -wal file exists too
            files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
            assert {f.name: f.stat().st_mode & 0o777 for f in files} == {f.name: 0o600 for f in files}
        finally:
            ledger.close()
        path.chmod(0o644)  # a ledger an older bridge left readable
        ledger.open()
        ledger.close()
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(previous)
