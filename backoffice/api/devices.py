"""DeviceService."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import devices, models
from backoffice.devices import account_states
from backoffice.devices.hello import Hello
from backoffice.platform import hints, paging
from backoffice.platform.config import Settings
from backoffice.platform.interceptors import current_caller
from backoffice.platform.mutations import Mutations, Wake
from backoffice.platform.vault import Vault
from signalhub.protocol import wire
from signalhub.protocol.wire import parse_id, parse_optional_id
from signalhub.v1 import backoffice_pb2 as pb

_STATUS = "DEVICE_STATUS"


def encode_device(device: models.Device, account: models.AccountState | None = None) -> pb.Device:
    hello = Hello.from_json(device.last_hello)
    state = (
        pb.DeviceAccountState(
            balance=wire.decimal_text(account.balance),
            equity=wire.decimal_text(account.equity),
            margin=wire.decimal_text(account.margin),
            free_margin=wire.decimal_text(account.free_margin),
            state_time=wire.timestamp(account.state_time),
        )
        if account is not None
        else None
    )
    return pb.Device(
        id=str(device.id),
        user_id=str(device.user_id),
        name=device.name,
        mac_address=device.mac_address or "",
        symbol_map=device.symbol_map,
        status=wire.enum_to_wire(pb.DeviceStatus, _STATUS, device.status),
        create_time=wire.timestamp(device.created_at),
        last_seen_time=wire.timestamp(device.last_seen_at),
        secret_rotate_time=wire.timestamp(device.secret_rotated_at),
        revoke_time=wire.timestamp(device.revoked_at),
        bridge_version=hello.bridge_version,
        account_currency=hello.account_currency,
        balance=wire.decimal_text(hello.balance),
        equity=wire.decimal_text(hello.equity),
        hello_time=wire.timestamp(device.last_hello_at),
        account_state=state,
    )


class DeviceServicer:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], vault: Vault, redis: Redis, settings: Settings
    ) -> None:
        self._sessions = sessions
        self._vault = vault
        self._mutations = Mutations(sessions, vault, redis)
        self._grace = timedelta(seconds=settings.secret_grace_seconds)
        self._max_devices = settings.max_devices_per_user

    async def RegisterDevice(self, request: pb.RegisterDeviceRequest, context: Any) -> pb.RegisterDeviceResponse:
        caller = current_caller()
        request_id = parse_optional_id(request.request_id, "request_id")

        async def register(session: AsyncSession, wake: Wake) -> pb.RegisterDeviceResponse:
            device, secret = await devices.register_device(
                session,
                self._vault,
                owner=caller,
                name=request.name,
                mac_address=request.mac_address,
                symbol_map=dict(request.symbol_map),
                request_id=request_id,
                cap=self._max_devices,
            )
            return pb.RegisterDeviceResponse(device=encode_device(device), secret=secret)

        return await self._mutations.run(caller.id, request, pb.RegisterDeviceResponse, register)

    async def GetDevice(self, request: pb.GetDeviceRequest, context: Any) -> pb.Device:
        caller = current_caller()
        device_id = parse_id(request.id, "id")
        async with self._sessions() as session:
            device = await devices.get_device(session, caller, device_id)
            states = await account_states.latest(session, [device.id])
        return encode_device(device, states.get(device.id))

    async def ListDevices(self, request: pb.ListDevicesRequest, context: Any) -> pb.ListDevicesResponse:
        caller = current_caller()
        status = wire.optional_enum_from_wire(pb.DeviceStatus, _STATUS, request.status, models.DeviceStatus, "status")
        async with self._sessions() as session:
            found, token = await devices.list_devices(session, caller, status=status, page=paging.requested(request))
            states = await account_states.latest(session, [d.id for d in found])
        return pb.ListDevicesResponse(
            devices=[encode_device(d, states.get(d.id)) for d in found], next_page_token=token
        )

    async def UpdateDevice(self, request: pb.UpdateDeviceRequest, context: Any) -> pb.Device:
        caller = current_caller()
        device_id = parse_id(request.id, "id")
        async with self._sessions.begin() as session:
            device = await devices.update_device(
                session,
                caller,
                device_id,
                fields=list(request.update_mask.paths),
                name=request.name,
                symbol_map=dict(request.symbol_map),
            )
        return encode_device(device)

    async def RotateDeviceSecret(
        self, request: pb.RotateDeviceSecretRequest, context: Any
    ) -> pb.RotateDeviceSecretResponse:
        caller = current_caller()
        device_id = parse_id(request.id, "id")

        async def rotate(session: AsyncSession, wake: Wake) -> pb.RotateDeviceSecretResponse:
            device, secret = await devices.rotate_device_secret(
                session, self._vault, caller, device_id, grace=self._grace, request_id=request.request_id
            )
            return pb.RotateDeviceSecretResponse(device=encode_device(device), secret=secret)

        return await self._mutations.run(caller.id, request, pb.RotateDeviceSecretResponse, rotate)

    async def RevokeDevice(self, request: pb.RevokeDeviceRequest, context: Any) -> pb.Device:
        caller = current_caller()
        device_id = parse_id(request.id, "id")
        async with self._sessions.begin() as session:
            device = await devices.revoke_device(session, caller, device_id)
        # Only after commit, so the gateway reads REVOKED when it wakes. A repeated revoke hints again:
        # harmless, and it covers a hint lost the first time.
        wake = Wake()
        wake.add([device.id], hints.REVOKED)
        await self._mutations.publish(wake)
        return encode_device(device)
