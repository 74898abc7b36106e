#!/usr/bin/env bash
# libvuf.so exports exactly the vuf_ API (src/libvuf.map) under the soname
# libvuf.so.0: an internal fe_* helper must not collide with a VMM's own.
set -u
lib=$1
fail=0
soname=$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
if [ "$soname" != "libvuf.so.0" ]; then
  echo "FAIL: soname is '$soname', want libvuf.so.0"; fail=1
fi
syms=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRVW]$/ {print $3}' | sed 's/@.*//')
n=$(printf '%s\n' "$syms" | grep -c '^vuf_' || true)
stray=$(printf '%s\n' "$syms" | grep -v '^vuf_' | grep -v '^VUF_0$' || true)
if [ -n "$stray" ]; then
  echo "FAIL: exported outside the vuf_ prefix:"; printf '  %s\n' $stray; fail=1
fi
if [ "$n" -lt 100 ]; then
  echo "FAIL: only $n vuf_ symbols exported (the API has well over 100)"; fail=1
fi
for s in vuf_frontend_new vuf_client_new vuf_conn_connect vuf_virtq_notify; do
  printf '%s\n' "$syms" | grep -qx "$s" || { echo "FAIL: $s not exported"; fail=1; }
done
[ $fail -eq 0 ] && echo "ok: $n vuf_ symbols, nothing else, soname $soname"
exit $fail
