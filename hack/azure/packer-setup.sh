#!/usr/bin/env bash
# Fetches the schema sources of packer_routes.py (requirements-packer.txt):
# pip downloads the three wheels (no dependencies, nothing installed) and the
# api-version folders the Packer azure-arm plugin v1.4.5 uses are unpacked to
# $KILN_CACHE_DIR/azure-sdk-packer/azure/mgmt/... The stand-in reads them with
# ast (never imports them). Idempotent (a stamp); about 10 s cold, 0 s after.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
dest="$cache_root/azure-sdk-packer"
py="${KILN_PYTHON:-$cache_root/venv/bin/python3}"
[ -x "$py" ] || py=python3
say() { echo "packer-setup(azure): $*" >&2; }
want="$(sha256sum "$here/requirements-packer.txt" "$0" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$dest/.stamp" 2>/dev/null)" = "$want" ]; then
	say "schemas already in $dest"
	exit 0
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
