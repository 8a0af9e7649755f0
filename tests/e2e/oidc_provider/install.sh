#!/usr/bin/env bash
# Install time only: the exact oidc-provider of package-lock.json into node_modules/.
# The interop test fails (never downloads) when this has not been run.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error
