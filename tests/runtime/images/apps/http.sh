#!/bin/sh
# An http app: busybox httpd on $PORT serving /www (GET /healthz -> 200 "ok").
echo "http app listening on ${PORT:?PORT is not set}"
exec httpd -f -v -p "$PORT" -h /www
