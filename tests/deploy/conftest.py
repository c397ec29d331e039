"""Fixtures of the deploy tests: the private podman, the images built from the Dockerfile, and
containers started with ``--network host`` that are removed after each test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.deploy.podman import Podman, podman_root

# The scripted upstream of the integration tests, for the drain test's slow exportImage.
from tests.integration.conftest import fake_upstream  # noqa: F401

GATEWAY_IMAGE = "localhost/tile-gateway:test"
IMAGESERVER_IMAGE = "localhost/tile-gateway-imageserver:test"

RunContainer = Callable[..., str]


@pytest.fixture(scope="session")
def podman() -> Podman:
    """The ``podman`` CLI with its private store (kept between runs, so are the built layers)."""
    return Podman(podman_root())


@pytest.fixture(scope="session")
def gateway_image(podman: Podman) -> str:
    """The Dockerfile's default target, built (from cache when nothing changed)."""
    return podman.build("gateway", GATEWAY_IMAGE)


@pytest.fixture(scope="session")
def imageserver_image(podman: Podman) -> str:
    """The Dockerfile's ``imageserver`` target: the reference ImageServer for demos."""
    return podman.build("imageserver", IMAGESERVER_IMAGE)


@pytest.fixture
def run_container(podman: Podman) -> Iterator[RunContainer]:
    """``run_container(image, *args, options=[...]) -> name``: a detached container, on the
    host's network (loopback is the host's) unless ``options`` name another, removed with its
    anonymous volumes after the test."""
    names: list[str] = []

    def run(image: str, *args: str, options: tuple[str, ...] = ()) -> str:
        name = f"tg-test-{uuid.uuid4().hex[:12]}"
        names.append(name)
        network = () if "--network" in options else ("--network", "host")
        podman("run", "--detach", "--name", name, *network, *options, image, *args)
        return name

    yield run
    # The last first: a container in another's network namespace holds that one.
    for name in reversed(names):
        podman("rm", "--force", "--volumes", "--time", "0", name)
