#!/usr/bin/env bash
# libvuf.so exports exactly the vuf_ API (src/libvuf.map) under the soname
# libvuf.so.0: an internal fe_* helper must not collide with a VMM's own.
# With a second argument, the installed static archive: no global defined
# name outside the vuf_ prefix either, and (third argument `link`) a
# program links against it alone and runs.
set -u
lib=$1
archive=${2:-}
link=${3:-nolink}
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
[ -n "$archive" ] || exit $fail

# Global defined: uppercase types but U (undefined), plus GNU unique (u)
# and indirect functions (i).
asyms=$(nm --defined-only "$archive" 2>/dev/null | awk 'NF == 3 && $2 ~ /^[A-TV-Zui]$/ {print $3}')
an=$(printf '%s\n' "$asyms" | grep -c '^vuf_' || true)
astray=$(printf '%s\n' "$asyms" | grep -v '^vuf_' | grep -v '^$' || true)
if [ -n "$astray" ]; then
  echo "FAIL: $(basename "$archive") defines global names outside the vuf_ prefix:"
  printf '  %s\n' $astray; fail=1
fi
if [ "$an" -lt "$n" ]; then
  echo "FAIL: $(basename "$archive") defines $an vuf_ names, libvuf.so exports $n"; fail=1
fi
if [ "$link" = link ]; then
  tmp=$(mktemp -d /tmp/vuf-exports.XXXXXX)
  trap 'rm -rf "$tmp"' EXIT
  cat >"$tmp/m.c" <<'C'
int vuf_conn_connect(const char *path, int timeout_ms, void **out);
/* Names a VMM may well have: the library's helpers must not take them. */
int fe_stream_check(void);
int vq_add_one(void);
int fe_stream_check(void) { return 0; }
int vq_add_one(void) { return 0; }
int main(void)
{
    return vuf_conn_connect(0, 0, 0) == -22 ? fe_stream_check() + vq_add_one() : 1;
}
C
  if ! ${CC:-cc} "$tmp/m.c" "$archive" -lpthread -o "$tmp/m" >"$tmp/log" 2>&1; then
    cat "$tmp/log"; echo "FAIL: a program with fe_/vq_ names of its own does not link with $(basename "$archive")"; fail=1
  elif ! "$tmp/m"; then
    echo "FAIL: the program linked with $(basename "$archive") failed"; fail=1
  fi
fi
note=", and a program linked with it ran"
[ "$link" = link ] || note=" (no link check: sanitizer build)"
[ $fail -eq 0 ] && echo "ok: $(basename "$archive"): $an vuf_ names global, nothing else$note"
exit $fail
