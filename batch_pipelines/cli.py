"""The ``batch-pipelines`` command.

``batch-pipelines serve`` runs the local batch service: an OpenAI-compatible Files + Batches API
(Anthropic's Message Batches under ``/v1/messages/batches`` with ``--profile anthropic``, Gemini's
Batch Mode and Files under ``/v1`` and ``/v1beta`` with ``--profile gemini``)
on this machine (see ``batch_pipelines.local_service``)::

    BATCH_PIPELINES_LOCAL_API_KEY=sk-local batch-pipelines serve --port 8787 \
        --data-dir .local_service --profile moonshot --speed realistic

The API key comes from that environment variable, ``--api-key-file`` or ``--api-key`` (visible
in ``ps``); without one the service accepts every request, and then binds only the loopback
unless ``--allow-no-key`` says otherwise. An empty key is refused.

``--forward-url`` has every request of every batch answered by a real-time OpenAI-compatible server
(vLLM, Ollama, llama.cpp) instead of the built-in responder: your own model behind the Batch API.
Its key, if it needs one, is named by ``--forward-api-key-env`` and read from the environment:
never written on the command line.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from batch_pipelines.local_service.forwarding import DEFAULT_CONCURRENCY as DEFAULT_FORWARD_CONCURRENCY
from batch_pipelines.local_service.forwarding import ForwardingResponder
from batch_pipelines.profiles import PROFILES

__all__ = ["API_KEY_ENV", "main"]

API_KEY_ENV = "BATCH_PIPELINES_LOCAL_API_KEY"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="batch-pipelines", description="Run LLM batch jobs through Batch APIs.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the local batch service (OpenAI's protocol, Anthropic's with --profile anthropic, Gemini's with --profile gemini)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8787, help="port to listen on (default 8787; 0 picks a free one)")
    serve.add_argument("--data-dir", type=Path, default=Path(".local_service"), help="where state and files live")
    serve.add_argument("--profile", choices=sorted(PROFILES), default="openai", help="provider to pose as")
    serve.add_argument("--speed", choices=["instant", "realistic"], default="instant", help="processing pace")
    serve.add_argument(
        "--time-scale", type=float, default=1.0, help="completion-window speed-up (8640: a 24h window lasts 10 s)"
    )
    serve.add_argument(
        "--api-key", default=None, help=f"bearer key clients must send; prefer env {API_KEY_ENV} or --api-key-file (a command line is visible to every local user)"
    )
    serve.add_argument("--api-key-file", type=Path, default=None, help="file holding the key clients must send")
    serve.add_argument(
        "--allow-no-key", action="store_true", help="serve beyond this machine without a key (refused otherwise)"
    )
    forward = serve.add_argument_group("forwarding to your own model server")
    forward.add_argument(
        "--forward-url", default=None, help="answer each request through this real-time OpenAI-compatible API root (http://127.0.0.1:8000/v1)"
    )
    forward.add_argument("--forward-model", default=None, help="model sent upstream in place of each request's")
    forward.add_argument(
        "--forward-concurrency",
        type=int,
        default=DEFAULT_FORWARD_CONCURRENCY,
        help=f"requests in flight upstream at once (default {DEFAULT_FORWARD_CONCURRENCY})",
    )
    forward.add_argument(
        "--forward-api-key-env", default=None, metavar="NAME", help="environment variable holding the upstream key (its name, not the key)"
    )
    serve.set_defaults(handler=_serve)

    args = parser.parse_args(argv)
    args.handler(args)


def _api_key(args: argparse.Namespace) -> str | None:
    """The key clients must send: --api-key-file, --api-key or the environment; None to accept every request.

    An empty key is a mistake, not "no key"; no key beyond the loopback needs --allow-no-key.
    """
    if args.api_key_file is not None:
        key: str | None = args.api_key_file.read_text(encoding="utf-8").strip()
        where = f"the file {args.api_key_file}"
    elif args.api_key is not None:
        key, where = args.api_key, "--api-key"
    else:
        key, where = os.environ.get(API_KEY_ENV), f"${API_KEY_ENV}"
    if key is not None and not key.strip():
        raise SystemExit(f"batch-pipelines serve: the API key from {where} is empty; give a key, or none at all")
    if key is None and not _loopback(args.host) and not args.allow_no_key:
        raise SystemExit(
            f"batch-pipelines serve: refusing to serve {args.host} without an API key; set {API_KEY_ENV} "
            "(or --api-key-file), or pass --allow-no-key"
        )
    return key


def _forwarding(args: argparse.Namespace) -> ForwardingResponder | None:
    """The responder --forward-url asks for, or None; forwarding options without a URL are a mistake."""
    if args.forward_url is None:
        if args.forward_model is not None or args.forward_api_key_env is not None or args.forward_concurrency != DEFAULT_FORWARD_CONCURRENCY:
            raise SystemExit("batch-pipelines serve: --forward-model, --forward-concurrency and --forward-api-key-env need --forward-url")
        return None
    try:
        return ForwardingResponder(
            args.forward_url,
            model=args.forward_model,
            concurrency=args.forward_concurrency,
            api_key_env=args.forward_api_key_env,
        )
    except ValueError as exc:  # an unset key variable, a value that is not a variable's name: never echoed
        raise SystemExit(f"batch-pipelines serve: {exc}") from None


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace) -> None:
    import socket

    import uvicorn

    from batch_pipelines.local_service import BatchEngine, create_app

    api_key = _api_key(args)
    forward = _forwarding(args)
    engine = BatchEngine(args.data_dir, profile=args.profile, speed=args.speed, time_scale=args.time_scale, responder=forward)
    if forward is not None:
        forward.close()  # the engine records its spec; each batch's worker builds its own
    # Bind first so the printed URL carries the real port, also with --port 0.
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    # Listening before the URL is printed: a client that connects at once waits in the backlog
    # until uvicorn accepts, instead of being refused.
    sock.listen(128)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    version = "/v1beta" if PROFILES[args.profile].protocol == "gemini" else "/v1"  # Gemini's docs' version (v1 is served too)
    print(f"local batch service ({args.profile}, {args.speed}) at http://{host}:{port}{version}", flush=True)
    if api_key is None:
        print("no API key set: every request is accepted", flush=True)
    if forward is not None:
        print(f"every request is answered by {args.forward_url}", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(engine, api_key=api_key), log_level="warning"))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn re-raises Ctrl-C after its graceful shutdown: a normal way to stop
    finally:
        engine.close()


if __name__ == "__main__":
    main()
