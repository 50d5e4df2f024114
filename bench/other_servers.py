"""The bridge's app on other HTTP servers than `serve`'s, to compare their limits and speed.

`python -m bench.other_servers --server NAME --config settings.toml` builds the app exactly as
`serve` does and runs it on uvicorn's h11 protocol, Hypercorn or Granian, each configured with
the nearest equivalent of `[server] max_header_bytes` and `request_timeout` it has. Hypercorn
and Granian are not dependencies of the bridge: `pip install hypercorn granian` first.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn

from bridge.app import create_app, open_bridge
from bridge.logs import configure_logging
from bridge.settings import ServerSettings, load_settings

KEEP_ALIVE_SECONDS = 5  # `serve`'s, uvicorn's default


def uvicorn_h11(app: Any, server: ServerSettings) -> None:
    uvicorn.Server(uvicorn.Config(
        app, host=server.host, port=server.port, log_config=None, access_log=False,
        http="h11", ws="none", h11_max_incomplete_event_size=server.max_header_bytes,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )).run()


def hypercorn_server(app: Any, server: ServerSettings) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{server.host}:{server.port}"]
    config.h11_max_incomplete_size = server.max_header_bytes
    config.keep_alive_timeout = KEEP_ALIVE_SECONDS
    # Hypercorn's only read limit: the longest wait for any next bytes.
    config.read_timeout = int(server.request_timeout.total_seconds())
    asyncio.run(serve(app, config))


def granian_server(app: Any, server: ServerSettings) -> None:
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.server.embed import Server

    http1 = HTTP1Settings(
        header_read_timeout=int(server.request_timeout.total_seconds() * 1000),
        max_buffer_size=max(server.max_header_bytes, 8192),
    )
    granian = Server(app, address=server.host, port=server.port, interface=Interfaces.ASGI,
                     http=HTTPModes.http1, websockets=False, http1_settings=http1)
    asyncio.run(granian.serve())


SERVERS: dict[str, Callable[[Any, ServerSettings], None]] = {
    "uvicorn-h11": uvicorn_h11, "hypercorn": hypercorn_server, "granian": granian_server,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.other_servers", description=__doc__)
    parser.add_argument("--server", choices=sorted(SERVERS), required=True)
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    configure_logging(settings.log.level, settings.log.format, background=True)
    app = create_app(open_bridge(settings))
    SERVERS[args.server](app, settings.server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
