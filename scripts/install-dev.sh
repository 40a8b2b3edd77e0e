#!/usr/bin/env bash
# Development / CI set-up: what the tests need beyond pip, then the package with its dev extras.
#
# The kiosk page test drives Debian's headless Chromium through chromium-driver (Selenium). They are installed
# with apt-get when missing and this runs as root on a system with apt-get; elsewhere that step is skipped
# (install chromium + chromedriver yourself, or the browser test skips and says why).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromedriver >/dev/null 2>&1 || ! { command -v chromium >/dev/null 2>&1 \
        || command -v chromium-browser >/dev/null 2>&1; }; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } \
            || echo "install-dev: apt-get could not install chromium + chromium-driver" >&2
    fi
fi

pip install -q -e ".[dev]"
