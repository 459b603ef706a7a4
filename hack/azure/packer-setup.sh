#!/usr/bin/env bash
# Fetches the schema sources of packer_routes.py (requirements-packer.txt):
# pip downloads the three wheels (no dependencies, nothing installed) and the
# api-version folders the Packer azure-arm plugin v1.4.5 uses are unpacked to
# $KILN_CACHE_DIR/azure-sdk-packer/azure/mgmt/... The stand-in reads them with
# ast (never imports them). Also installs paramiko (requirements-packer-ssh.txt)
# into the kiln venv for the stand-in's SSH responder. Idempotent (a stamp);
# a few seconds cold, 0.1 s after.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
dest="$cache_root/azure-sdk-packer"
py="${KILN_PYTHON:-$cache_root/venv/bin/python3}"
[ -x "$py" ] || py=python3
say() { echo "packer-setup(azure): $*" >&2; }
want="$(cat "$here/requirements-packer.txt" "$here/requirements-packer-ssh.txt" "$here/packer-setup.sh" | sha256sum | cut -d" " -f1)"
if [ "$(cat "$dest/.stamp" 2>/dev/null)" = "$want" ] && "$py" -c 'import paramiko' 2>/dev/null; then
	say "schemas already in $dest; paramiko in the venv"
	exit 0
fi
if ! "$py" -m pip install -q --disable-pip-version-check -r "$here/requirements-packer-ssh.txt" >&2; then
	say "pip install of requirements-packer-ssh.txt (paramiko, the SSH responder) failed"
	exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" -r "$here/requirements-packer.txt" >&2
rm -rf "$dest.new"
"$py" - "$tmp" "$dest.new" <<'PY'
import glob, os, sys, zipfile
src, out = sys.argv[1], sys.argv[2]
keep = ("azure/mgmt/compute/v2021_11_01/", "azure/mgmt/compute/v2021_10_01/", "azure/mgmt/compute/v2021_08_01/",
        "azure/mgmt/network/v2018_01_01/", "azure/mgmt/resource/resources/v2018_02_01/")
found = set()
for whl in glob.glob(os.path.join(src, "*.whl")):
    with zipfile.ZipFile(whl) as z:
        for n in z.namelist():
            for k in keep:
                if n.startswith(k) and "/aio/" not in n and n.endswith(".py"):
                    z.extract(n, out)
                    found.add(k)
missing = set(keep) - found
if missing:
    sys.exit(f"packer-setup: not in the wheels: {sorted(missing)}")
PY
echo "$want" >"$dest.new/.stamp"
rm -rf "$dest"
mv "$dest.new" "$dest"
say "unpacked $(grep -v '^#' "$here/requirements-packer.txt" | tr '\n' ' ')api folders into $dest"
