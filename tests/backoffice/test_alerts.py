"""Alerts about devices that hold positions: raised once per incident (however many rounds or workers
look), resolved when the device is heard from again; admins list them, nobody else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy import update

from backoffice import alerts, worker
from backoffice.bootstrap import Resources
from backoffice.models import AlertKind, Device
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from tests.conftest import KeyCredentials, UserCredentials, rpc_failure
from tests.gateway.support import Book

SILENT = timedelta(hours=48)
GONE = timedelta(minutes=10)


async def _seen(res: Resources, device: KeyCredentials, ago: timedelta) -> None:
    async with res.sessions.begin() as session:
        await session.execute(update(Device).where(Device.id == device.id).values(last_seen_at=datetime.now(UTC) - ago))


async def _watch(res: Resources) -> list[alerts.Raised]:
    async with res.sessions.begin() as session:
        raised = await alerts.watch_devices(session, datetime.now(UTC), silent_after=SILENT, disconnected_after=GONE)
    alerts.announce(raised)
    return raised


async def _listed(channel: grpc.aio.Channel, admin: UserCredentials, device: KeyCredentials) -> list[pb.Alert]:
    response = await rpc.AuditServiceStub(channel).ListAlerts(
        pb.ListAlertsRequest(device_id=str(device.id), status=pb.ALERT_STATUS_OPEN), metadata=admin.metadata
    )
    return list(response.alerts)


async def test_each_incident_raises_one_alert_until_it_ends(
    res: Resources,
    backoffice_channel: grpc.aio.Channel,
    admin: UserCredentials,
    user: UserCredentials,
    device: KeyCredentials,
) -> None:
    position_id = await (await Book.open(res, user.id)).position(device.id)
    await _seen(res, device, timedelta(minutes=11))
    [gone] = [a for a in await _watch(res) if a.device_id == device.id]
    assert (gone.kind, gone.subject_id) == (AlertKind.DEVICE_DISCONNECTED, device.id)
    await _seen(res, device, timedelta(hours=49))
    raised = [a for a in await _watch(res) if a.device_id == device.id]
    assert [(a.kind, a.subject_id) for a in raised] == [(AlertKind.DEVICE_SILENT, position_id)]
    assert [a for a in await _watch(res) if a.device_id == device.id] == []  # once per incident
    assert {a.kind for a in await _listed(backoffice_channel, admin, device)} == {
        pb.ALERT_KIND_DEVICE_SILENT,
        pb.ALERT_KIND_DEVICE_DISCONNECTED,
    }
    await _seen(res, device, timedelta(seconds=1))  # heard from again: both incidents are over
    await _watch(res)
    assert await _listed(backoffice_channel, admin, device) == []
    await _seen(res, device, timedelta(minutes=11))  # a new incident: a new alert
    assert [a.kind for a in await _watch(res) if a.device_id == device.id] == [AlertKind.DEVICE_DISCONNECTED]


async def test_the_worker_round_raises_them(res: Resources, user: UserCredentials, device: KeyCredentials) -> None:
    await (await Book.open(res, user.id)).position(device.id)
    await _seen(res, device, timedelta(hours=1) + timedelta(seconds=res.settings.disconnected_alert_seconds))
    assert (await worker.run_once(res))["alerts_raised"] >= 1


async def test_only_admins_list_alerts(backoffice_channel: grpc.aio.Channel, user: UserCredentials) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rpc.AuditServiceStub(backoffice_channel).ListAlerts(pb.ListAlertsRequest(), metadata=user.metadata)
    assert rpc_failure(info.value).code == grpc.StatusCode.PERMISSION_DENIED
