# Shared by the counter's loop and CGI scripts (sourced, busybox sh): where its data is.
# DATA_DIR, else VOLUME_DATA (gitorch sets VOLUME_<NAME> to a mount's mountPath).
data=${DATA_DIR:-${VOLUME_DATA:-}}
