#!/usr/bin/env bash
# Runs every test: pure unit tests, socket-level tests of the control API, and live kernel tests
# in throwaway network namespaces (these need root; without root they are skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
scripts/deps.sh
swift build --build-tests
swift test --skip-build "$@"
