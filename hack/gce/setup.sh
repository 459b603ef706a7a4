#!/usr/bin/env bash
# Puts what the Compute Engine stand-in needs (see README.md beside this file)
# into "$KILN_CACHE_DIR/gce" (default ~/.cache/kiln/gce):
#   compute-api.json   Google's Discovery document for Compute Engine v1,
#                      revision 20261026, checked against its sha256.
# From ../shared/specs/gce/ beside the repository when it is there, else from
# the Go module google.golang.org/api v0.311.0 (a clean CI clone has no
# ../shared): `go mod download`, then <Dir>/compute/v1/compute-api.json.
# KILN_GCE_SPEC: another copy of the file (it must have the same sha256).
# KILN_GCE_FROM_GO=1: skip ../shared and take the Go module's copy.
# Debian packages only if missing: python3, openssl, curl (and golang-go when
# the Go route is needed and there is no go). Safe to run again: it only checks
# the checksum when the file is there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
dir="$cache_root/gce"
dest="$dir/compute-api.json"
# From shared/specs/gce/SOURCE.md: the module version and the file's checksum.
module="google.golang.org/api"
module_version="v0.311.0"
want_sha="92f436e6d5a1c1e542b10c71a74aa64cf9c896530361f6a7c2a52e2c62464753"
shared="$(cd "$here/../../.." && pwd)/shared/specs/gce/compute-api.json"
start=$(date +%s.%N)
say() { echo "setup(gce): $*" >&2; }
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
sha() { sha256sum "$1" | cut -d' ' -f1; }

missing=()
command -v python3 >/dev/null || missing+=(python3)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
	say "installing Debian packages: ${missing[*]}"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' || {
	say "python3 $(python3 --version) is older than 3.9"
	exit 1
}

mkdir -p "$dir"
if [ -s "$dest" ] && [ "$(sha "$dest")" = "$want_sha" ]; then
	say "Discovery document already in place: $dest"
else
	src=""
	if [ -n "${KILN_GCE_SPEC:-}" ]; then
		src="$KILN_GCE_SPEC"
		how="KILN_GCE_SPEC"
	elif [ "${KILN_GCE_FROM_GO:-0}" != 1 ] && [ -f "$shared" ]; then
		src="$shared"
		how="shared/specs/gce beside the repository"
	else
		if ! command -v go >/dev/null; then
			say "installing Debian package golang-go (to download the $module module)"
			$sudo apt-get update -qq
			DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq golang-go >/dev/null
		fi
		say "downloading Go module $module@$module_version (about 50 MB; source only, nothing is built)"
		# Outside any module, so that no go.mod is read or written.
		tmp="$(mktemp -d)"
		mod_dir="$(cd "$tmp" && GOFLAGS=-mod=mod go mod download -json "$module@$module_version" |
			python3 -c 'import json, sys; d = json.load(sys.stdin); sys.exit(d["Error"]) if d.get("Error") else print(d["Dir"])')"
		rmdir "$tmp"
		src="$mod_dir/compute/v1/compute-api.json"
		how="Go module $module@$module_version"
	fi
	[ -f "$src" ] || {
		say "no Discovery document at $src"
		exit 1
	}
	got="$(sha "$src")"
	if [ "$got" != "$want_sha" ]; then
		say "checksum mismatch for $src: sha256 $got, want $want_sha (revision 20261026)"
		exit 1
	fi
	cp "$src" "$dest.tmp"
	chmod 0644 "$dest.tmp"
	mv "$dest.tmp" "$dest"
	say "copied the Discovery document from $how: $src -> $dest"
fi
say "sha256 $want_sha ok; ready in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.2f", e-s}')s: $dir"
