#!/bin/sh
# A local base image for the Dockerfile, made from Debian packages only, for hosts that cannot pull from Docker Hub:
#
#   deploy/images/debian-base.sh [TAG]      # as root; default TAG resnet-serving/python:3.11-bookworm
#
# debootstrap (minbase) fetches Debian bookworm with python3, python3-venv and python-is-python3 from a Debian mirror
# (DEBIAN_MIRROR), and `docker import` turns the tree into an image with the environment the official python images
# set (PATH, LANG). Its interpreter is bookworm's python3 (3.11.2), where the official python:3.11-slim-bookworm has
# the newest 3.11: the lock must install on both. `make images` runs this only when the default base cannot be pulled.
set -eu

tag="${1:-resnet-serving/python:3.11-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
for tool in debootstrap docker; do
    command -v "$tool" >/dev/null || { echo "debian-base.sh: $tool not found (apt-get install debootstrap docker.io)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "debian-base.sh: debootstrap needs root" >&2; exit 1; }

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$rootfs" "$mirror"
# What an image never needs: downloaded packages, package lists (the images install nothing with apt), manuals.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$tag"
