#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian machine:
# Debian packages (packer 1.6.6), a Python venv with moto's server, helm, a
# current Packer with its plugins (hack/packer/setup.sh), and the Go-built
# control plane (hack/testenv.sh). Safe to run again: it skips what
# is already there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

missing=()
command -v packer >/dev/null || missing+=(packer)
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v go >/dev/null || missing+=(golang-go)
if [ "${#missing[@]}" -gt 0 ]; then
	echo "setup: installing Debian packages: ${missing[*]}" >&2
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# moto's server stands in for EC2; pinned so runs are repeatable.
venv="$cache_root/venv"
requirements="$here/requirements-test.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/moto_server" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
	echo "setup: installing Python test tools into $venv" >&2
	python3 -m venv "$venv"
	"$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements"
	echo "$want" > "$stamp"
fi

# helm, pinned and built from Go modules like the control plane: the chart
# tests render with it and config/ is its output.
helm_version="v3.19.2"
tools="$cache_root/tools/bin"
if [ "$("$tools/helm" version --template '{{.Version}}' 2>/dev/null)" != "$helm_version" ]; then
	echo "setup: building helm $helm_version into $tools (about 2 minutes)" >&2
	mkdir -p "$tools"
	# The version is stamped the way helm's release builds do, so the check
	# above finds it next time.
	GOBIN="$tools" GOFLAGS=-mod=mod go install \
		-ldflags "-X helm.sh/helm/v3/internal/version.version=$helm_version" \
		"helm.sh/helm/v3/cmd/helm@$helm_version"
fi

# The clouds without an emulator: real Keystone and Glance (PyPI), the
# DigitalOcean stand-in behind Prism (npm), the Compute Engine stand-in's
# Discovery document (checksum-pinned), and azure-mgmt-compute for the Azure
# stand-in (PyPI, into the venv above); each skips when done.
"$here/openstack/setup.sh"
"$here/digitalocean/setup.sh"
"$here/gce/setup.sh"
"$here/azure/setup.sh"

# A current Packer (1.16) and the amazon, googlecompute, azure, openstack and
# digitalocean plugins, built from their Go modules into
# $cache_root/packer-current for tests/current_packer.rs (the versions the
# container image ships). Debian's packer 1.6.6 above stays the default of
# every other test. Cold: 12 to 20 minutes on 2 cores; warm: one line.
"$here/packer/setup.sh"

"$here/testenv.sh" >/dev/null
