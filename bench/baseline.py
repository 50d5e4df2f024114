"""The reference point: a bare Starlette endpoint that reads the body and answers "OK"."""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def messages(request: Request) -> PlainTextResponse:
    await request.body()
    return PlainTextResponse("OK")


app = Starlette(routes=[Route("/webhooks/messages", messages, methods=["POST"])])


def serve(asgi_app: Starlette, port: int) -> None:
    """Serve an app the way `sitegpt-bridge serve` serves the bridge (same uvicorn options)."""
    uvicorn.run(asgi_app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                server_header=False, lifespan="off")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    serve(app, parser.parse_args().port)


if __name__ == "__main__":
    main()
