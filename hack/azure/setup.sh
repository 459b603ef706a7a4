#!/usr/bin/env bash
# Installs what the Azure stand-in (README.md beside this file) needs:
#   - azure-mgmt-compute and azure-mgmt-resource (pinned in requirements.txt)
#     into the kiln venv ($KILN_CACHE_DIR/venv, the one hack/setup.sh makes):
#     the stand-in reads their generated models and operations as the schema
#     source for managed images, and for everything (galleries, images,
#     Providers_Get) when the Swagger files are not there;
#   - a copy of ../shared/specs/azure (when it sits beside the repository)
#     in $KILN_CACHE_DIR/specs/azure, the stand-in's third place to look.
# Safe to run again: it checks a stamp and skips what is done.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
venv="$cache_root/venv"
say() { echo "setup(azure): $*" >&2; }
start=$SECONDS

command -v python3 >/dev/null || {
	say "python3 is missing (hack/setup.sh installs it)"
	exit 1
}
stamp="$venv/.kiln-azure.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ -x "$venv/bin/python3" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
	say "azure-mgmt-compute and azure-mgmt-resource already in $venv"
else
	[ -x "$venv/bin/python3" ] || python3 -m venv "$venv"
	log="$(mktemp)"
	if ! "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt" >"$log" 2>&1; then
		cat "$log" >&2
		rm -f "$log"
		say "pip install into $venv failed"
		exit 1
	fi
	rm -f "$log"
	echo "$want" >"$stamp"
	say "installed $(grep -v '^#' "$here/requirements.txt" | tr '\n' ' ')into $venv"
fi

shared="$(cd "$here/../../.." && pwd)/shared/specs/azure"
dest="$cache_root/specs/azure"
if [ -f "$shared/SOURCE.md" ]; then
	if ! diff -rq "$shared" "$dest" >/dev/null 2>&1; then
		mkdir -p "$(dirname "$dest")"
		rm -rf "$dest.tmp"
		cp -r "$shared" "$dest.tmp"
		chmod -R u+w "$dest.tmp"
		rm -rf "$dest"
		mv "$dest.tmp" "$dest"
		say "copied the Swagger files from $shared to $dest"
	fi
fi
# the schemas and the SSH responder of the Packer azure-arm routes (packer_routes.py)
"$here/packer-setup.sh"
say "ready in $((SECONDS - start)) s"
