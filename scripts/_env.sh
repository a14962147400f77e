# Sourced by scripts/*: makes sure .venv exists and has the project installed (with dev extras).
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=".venv/.visio-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing visio-matrix and its dependencies into .venv (first run takes a minute or two)" >&2
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -e ".[dev]" >&2
  echo "$want" > "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"

# Browser tests (tests/browser): Debian's Chromium and the pinned livekit-client from npm.
# Installs them when possible; without them the browser tests skip locally and fail in CI.
ensure_browser_deps() {
  local chromium="${VISIO_CHROMIUM:-/usr/bin/chromium}" problem=""
  if [ ! -x "$chromium" ]; then
    if [ "$(id -u)" = "0" ]; then
      echo "[setup] installing Debian chromium for the browser tests" >&2
      DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 && \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >&2 || problem="apt-get install chromium failed"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      echo "[setup] installing Debian chromium for the browser tests (sudo)" >&2
      sudo -n env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 && \
        sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >&2 || problem="apt-get install chromium failed"
    else
      problem="no Chromium at $chromium and no root/sudo to install it (apt-get install chromium)"
    fi
  fi
  local dir="$ROOT/tests/browser" lockstamp="$ROOT/tests/browser/node_modules/.visio-lock"
  local lock
  lock="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
  if [ ! -f "$lockstamp" ] || [ "$(cat "$lockstamp")" != "$lock" ]; then
    if command -v npm >/dev/null 2>&1; then
      echo "[setup] npm ci in tests/browser (livekit-client)" >&2
      (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2) && echo "$lock" > "$lockstamp" \
        || problem="${problem:+$problem; }npm ci in tests/browser failed"
    else
      problem="${problem:+$problem; }npm is missing (needed to install livekit-client in tests/browser)"
    fi
  fi
  ensure_call_page || problem="${problem:+$problem; }the call page could not be built"
  if [ -n "$problem" ]; then
    if [ "${CI:-}" = "true" ]; then
      echo "[setup] ERROR: the browser tests must run in CI: $problem" >&2
      return 1
    fi
    echo "[setup] warning: browser tests will be skipped: $problem" >&2
  fi
}

# The call page (visio_matrix/web/app -> visio_matrix/web/static): npm ci && npm run build when the
# built page is missing or the lock file, build script or sources changed since the last build.
ensure_call_page() {
  local dir="$ROOT/visio_matrix/web/app" out="$ROOT/visio_matrix/web/static"
  local stamp="$ROOT/visio_matrix/web/app/node_modules/.visio-build" want
  want="$(cd "$dir" && cat package.json package-lock.json build.mjs index.html style.css src/*.js | sha256sum | cut -d' ' -f1)"
  if [ -f "$out/index.html" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "[setup] warning: npm is missing: the call page (/call/) cannot be built" >&2
    return 1
  fi
  echo "[setup] building the call page (npm ci && npm run build in visio_matrix/web/app)" >&2
  if (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2 && npm run --silent build >&2); then
    echo "$want" > "$stamp"
  else
    echo "[setup] warning: building the call page failed" >&2
    return 1
  fi
}
