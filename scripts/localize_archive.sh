#!/bin/sh
# libvuf.a as installed: every object of the library archive IN partially
# linked into one (ld -r), in which only the vuf_ names stay global
# (objcopy); the fe_*, vq_* helpers the sources share become local to it,
# so a VMM that links libvuf statically cannot clash with them. The same
# job for the static archive as src/libvuf.map does for libvuf.so.
# Usage: localize_archive.sh LD OBJCOPY AR IN OUT
set -eu
ld=$1 objcopy=$2 ar=$3 in=$4 out=$5
tmp=$(mktemp -d "${TMPDIR:-/tmp}/vuf-archive.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$ld" -r --whole-archive "$in" -o "$tmp/libvuf.o"
"$objcopy" --wildcard --keep-global-symbol='vuf_*' "$tmp/libvuf.o"
rm -f "$out"
"$ar" rcs "$out" "$tmp/libvuf.o"
