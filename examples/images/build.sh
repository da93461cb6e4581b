#!/bin/sh
# Build the example shop's images from nothing but a static busybox and docker:
#   gitorch-example/web:1  gitorch-example/web:2  gitorch-example/api:1
#   gitorch-example/api:2  gitorch-example/worker:1  gitorch-example/counter:1
# Idempotent and fast: docker's layer cache makes a rebuild take well under a second per
# image. Works from any directory; needs only the busybox-static and docker.io packages.
#
#   examples/images/build.sh            # all images
#   BUSYBOX=/path/to/static/busybox examples/images/build.sh
set -eu

here=$(cd "$(dirname "$0")" && pwd)

# The image is FROM scratch, so the busybox must be the static build (Debian package
# busybox-static installs it as /bin/busybox; the plain "busybox" package's binary is
# dynamically linked and would fail to start in the container).
busybox=${BUSYBOX:-/bin/busybox}
if [ ! -x "$busybox" ]; then
  echo "build.sh: no busybox at $busybox (apt-get install busybox-static, or set BUSYBOX)" >&2
  exit 1
fi
if ! command -v docker >/dev/null 2>&1; then
  echo "build.sh: docker is not installed (apt-get install docker.io)" >&2
  exit 1
fi

# The build context is staged in a temporary folder: the busybox binary (2 MB) is not
# kept in the repository, and the scripts' exec bits are set here whatever the checkout did.
ctx=$(mktemp -d "${TMPDIR:-/tmp}/gitorch-example-images.XXXXXX")
trap 'rm -rf "$ctx"' EXIT INT TERM
cp "$busybox" "$ctx/busybox"
cp "$here/Dockerfile" "$ctx/Dockerfile"
cp -R "$here/rootfs" "$here/apps" "$ctx/"
chmod 0755 "$ctx/busybox"
find "$ctx/rootfs/www/cgi-bin" "$ctx/apps" -type f -exec chmod 0755 {} +

build() { # APP VERSION
  printf 'building gitorch-example/%s:%s ... ' "$1" "$2"
  docker build --quiet \
    --build-arg "APP=$1" --build-arg "VERSION=$2" \
    --label "dev.gitorch.example=$1" \
    --tag "gitorch-example/$1:$2" "$ctx" >/dev/null 2>"$ctx/build.log" || {
    echo "failed" >&2
    cat "$ctx/build.log" >&2
    exit 1
  }
  echo "ok"
}

build web 1
build web 2
build api 1
build api 2
build worker 1
build counter 1
