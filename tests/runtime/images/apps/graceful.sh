#!/bin/sh
# Traps SIGTERM, cleans up for ${CLEANUP_SECONDS:-0.5}s, then exits 0.
on_term() {
    echo "got SIGTERM, cleaning up"
    sleep "${CLEANUP_SECONDS:-0.5}"
    echo "clean exit"
    exit 0
}
trap on_term TERM
echo "graceful app started"
# `wait` returns as soon as a trapped signal arrives; a foreground sleep would delay the trap.
while true; do
    sleep 1 &
    wait $!
done
