#!/bin/sh
# Prometheus multi-process files from a previous run of this container describe dead
# processes (their open-connection gauges would count forever): start from an empty
# directory. Then hand PID 1 over to the command.
set -eu
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    find "$PROMETHEUS_MULTIPROC_DIR" -mindepth 1 -delete
fi
exec "$@"
