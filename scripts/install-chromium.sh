#!/usr/bin/env bash
# Headless Chromium + ChromeDriver for the report's browser test (Debian packages chromium, chromium-driver).
# Installed when missing and possible (root + apt); otherwise the browser test is skipped with this reason.
set -u
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing chromium and chromium-driver for the report browser test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "could not install chromium; the report browser test will be skipped"
else
  echo "chromium not installed and cannot apt-get here; the report browser test will be skipped"
fi
exit 0
