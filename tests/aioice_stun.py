#!/usr/bin/env python3
"""aioice (PyPI) against icegate over TCP and TLS, for tests/turn_tcp_tls.rs.

Every mode prints one JSON object on stdout and bounds itself to --timeout
seconds. Only 127.0.0.1 is ever contacted.

  binding    a STUN Binding request built with aioice.stun.Message, the
             response parsed with aioice.stun.parse_message: prints
             {"mapped": [ip, port], "local": [ip, port]}
  turn       aioice.turn.create_turn_endpoint over TCP or TLS: allocates,
             sends --payload to the UDP peer at --peer-port through a channel
             and waits for it to come back; prints
             {"relayed": [ip, port], "mapped": [ip, port], "local": [ip, port],
              "echo": str, "from": [ip, port]}, then deletes the allocation.
  handshake  a TLS handshake with Python's ssl module limited by
             --max-version and --ciphers: prints {"ok": bool, "error": str,
             "version": str|null, "cipher": str|null, "local": [ip, port]}
"""

import argparse
import asyncio
import json
import socket
import ssl
import struct
import sys

try:
    from aioice import stun, turn
except ImportError as error:
    print(
        f"aioice is not installed ({error}): run `pip install aioice`",
        file=sys.stderr,
    )
    sys.exit(3)

HOST = "127.0.0.1"


def tls_context(args):
    if args.transport != "tls":
        return None
    context = ssl.create_default_context(cafile=args.ca)
    return context


async def read_frame(reader):
    """One STUN message from a stream: a 20-byte header, then its body."""
    header = await reader.readexactly(20)
    _, length = struct.unpack("!HH", header[:4])
    return header + await reader.readexactly(length)


async def binding(args):
    context = tls_context(args)
    reader, writer = await asyncio.open_connection(
        HOST,
        args.port,
        ssl=context,
        server_hostname=args.server_name if context else None,
    )
    try:
        request = stun.Message(
            message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST
        )
        writer.write(bytes(request))
        await writer.drain()
        response = stun.parse_message(await read_frame(reader))
        if response.transaction_id != request.transaction_id:
            raise RuntimeError(f"response to another transaction: {response}")
        if response.message_class != stun.Class.RESPONSE:
            raise RuntimeError(f"not a success response: {response}")
        local = writer.get_extra_info("sockname")
        return {
            "mapped": list(response.attributes["XOR-MAPPED-ADDRESS"]),
            "local": [local[0], local[1]],
            "tls": writer.get_extra_info("ssl_object") is not None,
        }
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


class Receiver(asyncio.DatagramProtocol):
    def __init__(self):
        self.received = asyncio.get_running_loop().create_future()

    def datagram_received(self, data, addr):
        if not self.received.done():
            self.received.set_result((data, addr))

    def error_received(self, exc):
        if not self.received.done():
            self.received.set_exception(exc)


async def turn_echo(args):
    context = tls_context(args)
    transport, receiver = await turn.create_turn_endpoint(
        Receiver,
        server_addr=(HOST, args.port),
        username=args.user,
        password=args.password,
        ssl=context,
        transport="tcp",
    )
    try:
        peer = (HOST, args.peer_port)
        transport.sendto(args.payload.encode(), peer)
        data, addr = await receiver.received
        inner = transport._TurnTransport__inner_protocol  # the TCP/TLS connection
        local = inner.transport.get_extra_info("sockname")
        return {
            "relayed": list(transport.get_extra_info("sockname")),
            "mapped": list(transport.get_extra_info("related_address")),
            "local": [local[0], local[1]],
            "tls": inner.transport.get_extra_info("ssl_object") is not None,
            "echo": data.decode(errors="replace"),
            "from": list(addr),
        }
    finally:
        # Refresh with LIFETIME 0, then the connection closes.
        transport.close()
        for _ in range(100):
            if inner_closed(transport):
                break
            await asyncio.sleep(0.02)


def inner_closed(transport):
    inner = transport._TurnTransport__inner_protocol
    return inner.transport.is_closing()


async def handshake(args):
    context = ssl.create_default_context(cafile=args.ca)
    # Let OpenSSL offer what the test asks for, however weak: the server is
    # the one that must refuse it.
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = ssl.TLSVersion[args.max_version]
    context.set_ciphers(args.ciphers)
    # Connect first, so that the report names the client's address even
    # when the handshake fails.
    sock = socket.create_connection((HOST, args.port), timeout=args.timeout)
    local = sock.getsockname()
    result = {"local": [local[0], local[1]]}
    try:
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=context, server_hostname=args.server_name
        )
    except (ssl.SSLError, ConnectionError, OSError) as error:
        sock.close()
        result.update(ok=False, error=repr(error), version=None, cipher=None)
        return result
    tls = writer.get_extra_info("ssl_object")
    result.update(ok=True, error="", version=tls.version(), cipher=tls.cipher()[0])
    writer.close()
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["binding", "turn", "handshake"])
    parser.add_argument("--transport", choices=["tcp", "tls"], default="tcp")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca")
    parser.add_argument("--server-name")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--peer-port", type=int)
    parser.add_argument("--payload", default="aioice over icegate")
    parser.add_argument("--max-version", default="TLSv1_2")
    parser.add_argument("--ciphers", default="DEFAULT")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    run = {"binding": binding, "turn": turn_echo, "handshake": handshake}[args.mode]

    async def bounded():
        return await asyncio.wait_for(run(args), args.timeout)

    print(json.dumps(asyncio.run(bounded())), flush=True)


if __name__ == "__main__":
    main()
