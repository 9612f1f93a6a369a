#!/usr/bin/env bash
# Make sure Debian's chromium and chromium-driver are installed (for the `evosam annotate` browser test,
# tests/annotate_browser.rs). Installs them with apt-get when missing (needs root); exit status 1 when they
# cannot be had, so the caller can skip the test visibly.
set -u
have() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }
if have; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "browser-deps: chromium/chromedriver missing and apt-get unavailable (not root?)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
{ apt-get install -y --no-install-recommends chromium chromium-driver \
  || { apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver; }; } >&2 \
  || { echo "browser-deps: apt-get could not install chromium chromium-driver" >&2; exit 1; }
have
