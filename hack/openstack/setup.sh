#!/usr/bin/env bash
# Installs the local OpenStack used by kiln's tests: real Keystone and Glance
# from PyPI, served by gunicorn, in a venv under the kiln cache. Idempotent:
# a second run only checks a stamp. Prints errors and one final line.
#
#   KILN_CACHE_DIR  cache root (default ~/.cache/kiln); the venv is
#                   $KILN_CACHE_DIR/openstack-venv
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
venv="$cache_root/openstack-venv"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
start=$SECONDS

# Debian packages, only those missing. Every Python dependency comes as a
# binary wheel for CPython 3.11 on x86_64, so no compiler is needed.
missing=()
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
[ -e /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
command -v curl >/dev/null || missing+=(curl) # smoke.sh
if [ "${#missing[@]}" -gt 0 ]; then
	log="$(mktemp)"
	if ! { $sudo apt-get update -qq &&
		DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"; } >"$log" 2>&1; then
		cat "$log" >&2
		rm -f "$log"
		echo "openstack setup: apt-get install ${missing[*]} failed" >&2
		exit 1
	fi
	rm -f "$log"
fi

stamp="$venv/.kiln-openstack.sha256"
want="$(cat "$here/requirements.txt" "$here/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ -x "$venv/bin/gunicorn" ] && [ -x "$venv/bin/keystone-manage" ] &&
	[ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
	echo "openstack setup: up to date in $venv"
	exit 0
fi

mkdir -p "$cache_root"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# A half-made venv from an interrupted run is reused: pip converges it.
if ! { python3 -m venv "$venv" &&
	"$venv/bin/pip" install -q --disable-pip-version-check \
		-r "$here/requirements.txt" -c "$here/constraints.txt"; } >"$log" 2>&1; then
	cat "$log" >&2
	echo "openstack setup: pip install into $venv failed" >&2
	exit 1
fi
echo "$want" >"$stamp"
echo "openstack setup: installed keystone, glance, gunicorn into $venv in $((SECONDS - start)) s"
