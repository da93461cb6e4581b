#!/bin/sh
# GET / (busybox httpd runs /cgi-bin/index.cgi for a directory with no index.html):
# the version page, one line, the same shape as the Python apps' page.
. /usr/lib/gitorch-example/cgi.sh
misbehave
extra=""
if [ -x /usr/lib/gitorch-example/app-status ]; then
  extra=" $(/usr/lib/gitorch-example/app-status)"
fi
reply "200 OK" "app=$APP version=$VERSION instance=${HOSTNAME:-$(hostname)}:${PORT:-8080}$extra"
