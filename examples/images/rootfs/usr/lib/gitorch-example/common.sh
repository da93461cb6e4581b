# Shared by the entrypoint, the app loops and every CGI script (sourced, busybox sh).

# One log line on stderr, which is the container's log (CGI scripts inherit it).
log() {
  echo "$(date -u +%Y-%m-%dT%H:%M:%S) ${APP:-app} $*" >&2
}

# Milliseconds since boot (/proc/uptime has centiseconds): a sub-second clock busybox sh
# can read without forking date. "12345.67" -> 1234567 cs -> x10 ms.
now_ms() {
  read -r up _ < /proc/uptime
  echo $(( ${up%.*}${up#*.} * 10 ))
}
