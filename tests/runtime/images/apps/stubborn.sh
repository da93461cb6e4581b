#!/bin/sh
# Ignores SIGTERM: only SIGKILL stops it.
trap '' TERM
echo "stubborn app started"
while true; do
    sleep 1
done
