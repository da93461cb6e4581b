#!/bin/sh
# Exits at once with code 3.
echo "exiting with 3"
exit 3
