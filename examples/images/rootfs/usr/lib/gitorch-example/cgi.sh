# Sourced by every CGI script in /www/cgi-bin: answer helpers and the misbehaviour switches.
. /usr/lib/gitorch-example/common.sh

started_ms=$(now_ms)

# reply "STATUS TEXT" BODY [CONTENT_TYPE]: write the CGI answer, log one line, exit.
# busybox httpd turns a leading "Status:" header into the HTTP status line.
reply() {
  printf 'Status: %s\r\nContent-Type: %s\r\nX-App-Version: %s\r\n\r\n%s\n' \
    "$1" "${3:-text/plain; charset=utf-8}" "$VERSION" "$2"
  log "${REMOTE_ADDR:-?} \"${REQUEST_METHOD:-GET} ${REQUEST_URI:-?}\" ${1%% *} $(( $(now_ms) - started_ms ))ms"
  exit 0
}

# Every path except the health check goes through here first: SLOW_MS then FAIL_MODE=errors.
misbehave() {
  if [ "${SLOW_MS:-0}" -gt 0 ]; then
    usleep $(( SLOW_MS * 1000 ))
  fi
  if [ "${FAIL_MODE:-}" = errors ]; then
    reply "500 Internal Server Error" "$APP $VERSION: failing on purpose (FAIL_MODE=errors)"
  fi
}
