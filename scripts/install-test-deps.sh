#!/usr/bin/env bash
# System programs the test suite drives for real: redis-server (unless REDIS_URL names a Redis),
# GDAL's command line tools (gdal-bin: WMTS/XYZ interop tests), Chromium and Node.js (browser
# tests), podman, runc and debootstrap (container tests: tests/deploy), the browser tests' npm
# packages from the lockfile, checkov in a virtualenv of its own (.venv/checkov: its pinned
# dependencies would fight the gateway's) for the Kubernetes manifests' policy scan, and the
# ArcGIS API for Python in another (.venv/arcgis), a client of the reverse-proxy tests.
# Installs what is missing with apt-get when it can (root or passwordless sudo); otherwise it
# says what to install and fails, because the suite must not silently skip what it cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -n "${REDIS_URL:-}" ] || command -v redis-server >/dev/null || missing+=(redis-server)
{ command -v gdal_translate && command -v gdalinfo; } >/dev/null || missing+=(gdal-bin)
command -v chromium >/dev/null || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v debootstrap >/dev/null || missing+=(debootstrap)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then sudo=(); elif sudo -n true 2>/dev/null; then sudo=(sudo -n); else
    echo "install-test-deps: missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "install-test-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# -nt is also true when node_modules (npm's hidden lockfile) is missing.
if [ -f tests/browser/package-lock.json ] && \
   [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
  packages=$(node -p "Object.keys(require('./tests/browser/package.json').dependencies).join(' ')")
  echo "install-test-deps: installing the browser tests' npm packages ($packages, with their" \
    "dependencies) into tests/browser/node_modules with npm ci"
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi

# The ArcGIS API for Python (tests/interop/test_proxy_arcgis.py runs it as a client process) in
# a virtualenv of its own too: about 650 MB with pandas, pyarrow and dask, whose pins (pandas 3,
# numpy >= 2.3) should not bind the gateway's. six: arcgis.raster imports it without declaring it.
arcgis_version=2.4.4
if ! .venv/arcgis/bin/python -c 'import arcgis.raster, sys; print(sys.modules["arcgis"].__version__)' \
    2>/dev/null | grep -qx "$arcgis_version"; then
  echo "install-test-deps: installing the ArcGIS API for Python (arcgis $arcgis_version, about" \
    "650 MB) into .venv/arcgis"
  python3 -m venv .venv/arcgis
  .venv/arcgis/bin/python -m pip install --quiet "arcgis==$arcgis_version" "six==1.17.0"
fi

checkov_version=3.3.30
if ! .venv/checkov/bin/checkov --version 2>/dev/null | grep -qx "$checkov_version"; then
  echo "install-test-deps: installing checkov $checkov_version into .venv/checkov (the policy scan" \
    "of k8s/)"
  python3 -m venv .venv/checkov
  .venv/checkov/bin/python -m pip install --quiet "checkov==$checkov_version"
fi
