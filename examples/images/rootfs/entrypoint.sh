#!/bin/sh
# PID 1 of every example image: check the env switches, start the app's background loop
# (if it has one) and busybox httpd, and turn SIGTERM into a prompt, clean exit 0.
#
# Why a shell and not "exec httpd": PID 1 gets no default signal actions, and busybox
# httpd installs no SIGTERM handler, so "docker stop" would wait its whole timeout
# (measured: 10 s) and then SIGKILL. This script traps TERM instead.
set -u

LIB=/usr/lib/gitorch-example
. "$LIB/common.sh"

case "${FAIL_MODE:-}" in
  ""|unhealthy|errors) ;;
  *) echo "$APP: FAIL_MODE='$FAIL_MODE' is not one of: unhealthy, errors (or empty)" >&2; exit 2 ;;
esac
case "${SLOW_MS:-0}" in
  ""|*[!0-9]*) echo "$APP: SLOW_MS='$SLOW_MS' is not a whole number" >&2; exit 2 ;;
esac

mkdir -p /tmp
loop_pid=""
if [ -x "$LIB/app-loop" ]; then
  "$LIB/app-loop" &
  loop_pid=$!
fi

httpd -f -v -p "${PORT:-8080}" -h /www &
httpd_pid=$!
log "version $VERSION listening on :${PORT:-8080} fail_mode=${FAIL_MODE:-none} slow_ms=${SLOW_MS:-0}"

# Requests in flight are separate processes (httpd forks per connection); give them up
# to DRAIN_MS to finish before PID 1 exits and the kernel kills the rest.
drain() {
  left=$(( ${DRAIN_MS:-5000} / 50 ))
  while [ "$left" -gt 0 ]; do
    busy=""
    for d in /proc/[0-9]*; do
      pid=${d#/proc/}
      # Not ourselves, not docker-init (PID 1) or whoever started us, and not a finished
      # child waiting to be reaped (state Z): only live request handlers hold the exit.
      [ "$pid" = "$$" ] || [ "$pid" = 1 ] || [ "$pid" = "$PPID" ] && continue
      set -- $(cat "$d/stat" 2>/dev/null) ""
      [ "${3:-Z}" = Z ] && continue
      busy=1
    done
    [ -z "$busy" ] && return 0
    usleep 50000
    left=$((left - 1))
  done
}

stop() {
  log "received $1, stopping"
  kill -TERM "$httpd_pid" $loop_pid 2>/dev/null
  wait
  drain
  log "stopped"
  exit 0
}
trap 'stop SIGTERM' TERM
trap 'stop SIGINT' INT

# wait returns early when a trapped signal arrives; the trap then exits. If httpd dies on
# its own (port taken...), stop the loop too and report httpd's status.
wait "$httpd_pid"
status=$?
[ -n "$loop_pid" ] && kill -TERM "$loop_pid" 2>/dev/null
log "httpd exited with status $status"
exit "$status"
