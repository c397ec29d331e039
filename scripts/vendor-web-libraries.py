#!/usr/bin/env python3
"""Re-create gateway/web/vendor/: the map libraries the viewer loads from the gateway itself.

For each package of PACKAGES, at the version tests/browser/package-lock.json pins:
``npm pack <name>@<version>`` (the configured npm registry, or npm's cache), check the tarball
against the lock file's ``integrity`` (sha512), and copy the listed files into
``gateway/web/vendor/<name>@<version>/<path>``, byte for byte. Then write the folder's
README.md (name, version, licence from the package's package.json, files and their hashes) and
check that every ``[file, integrity]`` pin of gateway/web/viewer.js is the hash of a vendored
file; a wrong pin is printed with the right value and fails the run.

To change a version: pin it in tests/browser/package.json, run
``npm install --prefix tests/browser`` (updates the lock file), run this script, then put the
pins it prints into viewer.js's LIBRARIES. ``--check`` writes nothing: it fails when the
committed folder differs from what the registry's packages give.

Needs ``npm``; exit status 0 when all is well, 1 on any mismatch or failure.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENDOR = REPO / "gateway" / "web" / "vendor"
LOCK = REPO / "tests" / "browser" / "package-lock.json"
VIEWER_JS = REPO / "gateway" / "web" / "viewer.js"

# The files the viewer loads, and each package's licence text. Not taken: source maps
# (browsers ask for them only with developer tools open) and Leaflet's images/ (its layers
# control and default marker, which the viewer does not use).
PACKAGES: dict[str, list[str]] = {
    "leaflet": ["dist/leaflet.js", "dist/leaflet.css", "LICENSE"],
    "ol": ["dist/ol.js", "ol.css", "LICENSE.md"],
    "maplibre-gl": ["dist/maplibre-gl.js", "dist/maplibre-gl.css", "LICENSE.txt"],
}
# viewer.js's pins: ["<name>@<version>/<path>", "<algorithm>-<base64 digest>"].
PIN = re.compile(r'\["([^"]+@[^"/]+/[^"]+)",\s*"(sha\d+)-([^"]+)"\]')

README = """\
# Vendored map libraries

The viewer (`gateway/web/index.html`, `viewer.js`) loads these files from the gateway, at
`/vendor/<name>@<version>/<path>`, so it works without internet access; with
`viewer.libraries: cdn` the browser fetches the same files from `viewer.cdn_url` instead.
Either way, viewer.js checks them with the Subresource Integrity hashes below.

Each folder holds files of the npm package `<name>@<version>`, byte for byte, taken from the
package tarball whose sha512 is the `integrity` of `tests/browser/package-lock.json`, and the
package's licence text. Written by `scripts/vendor-web-libraries.py`; do not edit by hand.

| package | version | licence (package.json) | licence text | tarball integrity |
|---|---|---|---|---|
{packages}

| file | bytes | SRI (sha384) |
|---|---|---|
{files}

Total: {total} bytes.

Notes:

- The scripts end with a `sourceMappingURL` comment; the source maps are not vendored (a
  browser asks for them only with its developer tools open, and the gateway answers 404).
- `leaflet.css` refers to `images/` (the layers control and the default marker); the viewer
  uses neither, so they are not vendored.
- `dist/ol.js` is a bundle that also holds code of OpenLayers' own npm dependencies; the `ol`
  package ships no licence texts for them. `maplibre-gl`'s `LICENSE.txt` carries the notices
  of the code its bundle contains.
"""


class VendorError(Exception):
    """Something the maintainer must fix; the message says what."""


def sri(body: bytes, algorithm: str = "sha384") -> str:
    """The Subresource Integrity value of ``body``: ``<algorithm>-<base64 digest>``."""
    return f"{algorithm}-{base64.b64encode(hashlib.new(algorithm, body).digest()).decode()}"


def locked_packages() -> dict[str, dict[str, str]]:
    """``{name: {"version", "integrity", "license"}}`` of PACKAGES, from the lock file."""
    entries = json.loads(LOCK.read_text())["packages"]
    locked = {}
    for name in PACKAGES:
        entry = entries.get(f"node_modules/{name}")
        if entry is None:
            raise VendorError(f"{LOCK} has no {name}: add it to tests/browser/package.json")
        locked[name] = entry
    return locked


def npm_pack(name: str, version: str, integrity: str, workdir: Path) -> Path:
    """The tarball of ``name@version`` in ``workdir``, checked against the lock's ``integrity``.

    Raises VendorError when npm fails or the tarball's sha512 is not ``integrity``.
    """
    result = subprocess.run(
        ["npm", "pack", f"{name}@{version}", "--json", "--pack-destination", str(workdir)],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise VendorError(f"npm pack {name}@{version} failed:\n{result.stderr}")
    tarball = workdir / json.loads(result.stdout)[0]["filename"]
    # Computed here, not read from npm's output: the lock file is what the tests install.
    actual = sri(tarball.read_bytes(), "sha512")
    if actual != integrity:
        raise VendorError(f"{name}@{version}: tarball {actual}, lock file {integrity}")
    return tarball


def unpack(name: str, version: str, tarball: Path, target: Path) -> tuple[str, dict[str, bytes]]:
    """Copy PACKAGES[name]'s files out of ``tarball`` into ``target``; returns the licence its
    package.json declares and the files by path.

    Raises VendorError when a file is missing, is not a regular file, or the tarball's
    package.json names another package or version.
    """
    files: dict[str, bytes] = {}
    with tarfile.open(tarball) as archive:

        def read(path: str) -> bytes:
            try:
                member = archive.getmember(f"package/{path}")
            except KeyError:
                raise VendorError(f"{name}@{version} has no {path}") from None
            extracted = archive.extractfile(member) if member.isfile() else None
            if extracted is None:
                raise VendorError(f"{name}@{version}: {path} is not a regular file")
            return extracted.read()

        manifest = json.loads(read("package.json"))
        if (manifest["name"], manifest["version"]) != (name, version):
            raise VendorError(f"{tarball.name} holds {manifest['name']}@{manifest['version']}")
        for path in PACKAGES[name]:
            files[path] = read(path)
    for path, body in files.items():
        destination = target / f"{name}@{version}" / path
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(body)
    return manifest["license"], files


def build(target: Path) -> None:
    """Write the whole vendor folder into the empty folder ``target``."""
    locked = locked_packages()
    package_rows, file_rows, total = [], [], 0
    with tempfile.TemporaryDirectory(prefix="vendor-") as workdir:
        for name, entry in locked.items():
            version = entry["version"]
            tarball = npm_pack(name, version, entry["integrity"], Path(workdir))
            licence, files = unpack(name, version, tarball, target)
            licence_file = PACKAGES[name][-1]
            package_rows.append(
                f"| {name} | {version} | {licence} | `{name}@{version}/{licence_file}` "
                f"| `{entry['integrity']}` |"
            )
            for path, body in files.items():
                file_rows.append(f"| `{name}@{version}/{path}` | {len(body)} | `{sri(body)}` |")
                total += len(body)
    (target / "README.md").write_text(
        README.format(packages="\n".join(package_rows), files="\n".join(file_rows), total=total)
    )


def check_pins(vendor: Path) -> list[str]:
    """What is wrong with viewer.js's pins against the files in ``vendor``, one line each,
    followed (when anything is) by the pins of every vendored script and stylesheet as
    viewer.js's LIBRARIES should hold them."""
    problems = []
    pins = PIN.findall(VIEWER_JS.read_text())
    if not pins:
        problems.append(f"{VIEWER_JS} has no [file, integrity] pins")
    for file, algorithm, digest in pins:
        path = vendor / file
        if not path.is_file():
            problems.append(f"viewer.js loads {file}, which is not vendored")
            continue
        actual = sri(path.read_bytes(), algorithm)
        if actual != f"{algorithm}-{digest}":
            problems.append(f'viewer.js: ["{file}", "{actual}"] (it has {algorithm}-{digest})')
    if problems:
        problems.append("the vendored scripts and stylesheets, pinned:")
        problems += [
            f'  ["{path.relative_to(vendor).as_posix()}", "{sri(path.read_bytes())}"],'
            for path in sorted(vendor.glob("*@*/**/*"))
            if path.suffix in (".js", ".css")
        ]
    return problems


def differences(expected: Path, actual: Path) -> list[str]:
    """Files that differ between two folders, or are in one only, as relative paths."""

    def listing(root: Path) -> dict[str, bytes]:
        return {
            str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("*"))
            if path.is_file()
        }

    want, have = listing(expected), listing(actual)
    return sorted(path for path in want.keys() | have.keys() if want.get(path) != have.get(path))


def main(argv: list[str] | None = None) -> int:
    """Run the command line (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; fail if gateway/web/vendor differs from the registry's packages",
    )
    args = parser.parse_args(argv)
    if shutil.which("npm") is None:
        print("vendor-web-libraries: npm is not installed", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="vendor-build-") as scratch:
        fresh = Path(scratch) / "vendor"
        fresh.mkdir()
        try:
            build(fresh)
        except VendorError as exc:
            print(f"vendor-web-libraries: {exc}", file=sys.stderr)
            return 1
        if args.check:
            changed = differences(fresh, VENDOR)
            for path in changed:
                print(f"vendor-web-libraries: {VENDOR / path} differs from the package")
            problems = check_pins(VENDOR)
        else:
            shutil.rmtree(VENDOR, ignore_errors=True)
            shutil.copytree(fresh, VENDOR)
            changed, problems = [], check_pins(VENDOR)
            print(f"vendor-web-libraries: wrote {VENDOR}")
    for problem in problems:
        print(f"vendor-web-libraries: {problem}", file=sys.stderr)
    return 1 if changed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
