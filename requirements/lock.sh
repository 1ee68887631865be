#!/usr/bin/env bash
# Refresh requirements/ci.txt, the exact versions .ci/run and the README's test command install.
# Run from a venv that has pip-tools (the dev extra): bash requirements/lock.sh
set -euo pipefail
cd "$(dirname "$0")"
pip-compile --quiet --upgrade --no-emit-index-url --no-emit-find-links --strip-extras --unsafe-package torch \
    --extra dev --extra keras --extra onnx --extra serve --extra coco --extra tiff --extra post --extra video \
    --extra tensorboard --extra mlflow \
    --constraint ci.in --output-file ci.txt ../pyproject.toml
