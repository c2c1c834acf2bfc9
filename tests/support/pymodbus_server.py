#!/usr/bin/env python3
"""A pymodbus server with a fixed register map, for fieldlink's interop tests.

A Modbus implementation nobody on the project wrote: the agent must read it right.

    pymodbus_server.py --map MAP.json tcp            # listens on 127.0.0.1, a free port
    pymodbus_server.py --map MAP.json rtu PATH BAUD  # RTU on a serial path (a socat pty)
    pymodbus_server.py --map MAP.json rtu-tcp        # RTU frames over TCP (a device server)

MAP.json: {"<unit id>": {"holding": {"<addr>": word, ...}, "input": {...},
                         "coil": {"<addr>": 0|1, ...}, "discrete": {...}}, ...}
Addresses are 0-based protocol addresses. Unmapped addresses inside a bank read as 0.

Prints "READY <port>" (TCP) or "READY" (RTU) on stdout once it listens.

Written for pymodbus 3.x and checked with 3.16: the datastore classes were renamed in 3.10
(ModbusSlaveContext -> ModbusDeviceContext, slaves= -> devices=), and the serial server's
framer argument moved from a class to a FramerType enum in 3.7; both spellings are handled.
ModbusSequentialDataBlock(address=1, ...) holds protocol address 0 in every 3.x version
(older ones add 1 to every request address; 3.16 subtracts 1 from the block start).
"""

import argparse
import asyncio
import json
import sys

import pymodbus
from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext

try:  # pymodbus >= 3.10
    from pymodbus.datastore import ModbusDeviceContext as DeviceContext

    CONTEXT_KW = "devices"
except ImportError:  # pymodbus < 3.10
    from pymodbus.datastore import ModbusSlaveContext as DeviceContext

    CONTEXT_KW = "slaves"

try:
    from pymodbus import FramerType

    RTU_FRAMER = FramerType.RTU
except ImportError:  # pymodbus < 3.7
    from pymodbus.framer import ModbusRtuFramer as RTU_FRAMER

from pymodbus.server import ModbusSerialServer, ModbusTcpServer


def block(entries, bits):
    """A sequential block from protocol address 0 to the highest mapped address."""
    top = max((int(a) for a in entries), default=0)
    values = [0] * (top + 1)
    for addr, value in entries.items():
        values[int(addr)] = bool(value) if bits else int(value) & 0xFFFF
    if bits:
        values = [bool(v) for v in values]
    return ModbusSequentialDataBlock(1, values)


def context(register_map):
    devices = {}
    for unit, banks in register_map.items():
        devices[int(unit)] = DeviceContext(
            di=block(banks.get("discrete", {}), True),
            co=block(banks.get("coil", {}), True),
            ir=block(banks.get("input", {}), False),
            hr=block(banks.get("holding", {}), False),
        )
    kwargs = {CONTEXT_KW: devices, "single": False}
    return ModbusServerContext(**kwargs)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--map", required=True)
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("tcp")
    sub.add_parser("rtu-tcp")
    rtu = sub.add_parser("rtu")
    rtu.add_argument("path")
    rtu.add_argument("baud", type=int)
    args = parser.parse_args()

    with open(args.map, encoding="utf-8") as f:
        ctx = context(json.load(f))

    if args.mode == "tcp":
        server = ModbusTcpServer(ctx, address=("127.0.0.1", 0))
    elif args.mode == "rtu-tcp":
        # pymodbus' RTU framer on a TCP listener: what a serial device server in raw TCP
        # mode puts on the wire.
        server = ModbusTcpServer(ctx, framer=RTU_FRAMER, address=("127.0.0.1", 0))
    else:
        server = ModbusSerialServer(
            ctx,
            framer=RTU_FRAMER,
            port=args.path,
            baudrate=args.baud,
            bytesize=8,
            parity="N",
            stopbits=1,
        )

    serving = asyncio.create_task(server.serve_forever())
    # serve_forever only returns at shutdown; READY once the transport exists.
    for _ in range(500):
        if server.transport is not None or serving.done():
            break
        await asyncio.sleep(0.02)
    if serving.done():
        serving.result()  # raises the reason it could not listen
        sys.exit("pymodbus server stopped before it was ready")
    if server.transport is None:
        sys.exit("pymodbus server did not start listening within 10 s")
    if args.mode in ("tcp", "rtu-tcp"):
        port = server.transport.sockets[0].getsockname()[1]
        print(f"READY {port}", flush=True)
    else:
        print("READY", flush=True)
    print(f"pymodbus {pymodbus.__version__} serving", file=sys.stderr, flush=True)
    await serving


if __name__ == "__main__":
    asyncio.run(main())
