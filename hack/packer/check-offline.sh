#!/usr/bin/env bash
# Prove that the Packer + plugins built by hack/packer/setup.sh work without
# network: `packer init` + `packer validate` on example.pkr.hcl (which pins
# every plugin with `required_plugins` and a version constraint), run inside
# an empty network namespace (`unshare -n`, needs root or user namespaces)
# when possible. Then show what Packer prints when a required plugin is not in
# PACKER_PLUGIN_PATH.
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
ROOT="$CACHE/packer-current"
PACKER="$ROOT/bin/packer"
[[ -x "$PACKER" ]] || { echo "run hack/packer/setup.sh first ($PACKER missing)" >&2; exit 1; }

NONET=()
if unshare -n true 2>/dev/null; then NONET=(unshare -n); fi
if [[ ${#NONET[@]} -eq 0 ]] && unshare -rn true 2>/dev/null; then NONET=(unshare -rn); fi
[[ ${#NONET[@]} -gt 0 ]] && echo "# running packer with no network: ${NONET[*]}" \
  || echo "# WARNING: unshare unavailable, network not cut off"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$HERE/example.pkr.hcl" "$work/"
cd "$work"

run() { # label, then env/command
  local label="$1"; shift
  echo "\$ $label"
  "$@" 2>&1
  echo "[exit $?]"
  echo
}

export CHECKPOINT_DISABLE=1
export PACKER_CONFIG_DIR="$work/config"   # keep ~/.config/packer out of it
export PACKER_PLUGIN_PATH="$ROOT/plugins"

fail=0
run "packer version" "${NONET[@]}" "$PACKER" version
run "packer plugins installed" "${NONET[@]}" "$PACKER" plugins installed
echo "\$ packer init ."
"${NONET[@]}" "$PACKER" init . 2>&1; rc=$?; echo "[exit $rc]"; echo; [[ $rc == 0 ]] || fail=1
echo "\$ packer validate -syntax-only ."
"${NONET[@]}" "$PACKER" validate -syntax-only . 2>&1; rc=$?; echo "[exit $rc]"; echo; [[ $rc == 0 ]] || fail=1
# The openstack builder's Prepare authenticates against identity_endpoint
# during validate (POST .../v3/auth/tokens), so a full validate of an
# openstack source needs a reachable Keystone; the others validate offline.
echo "\$ packer validate -except=openstack.kiln ."
"${NONET[@]}" "$PACKER" validate -except=openstack.kiln . 2>&1; rc=$?; echo "[exit $rc]"; echo; [[ $rc == 0 ]] || fail=1
run "packer validate . (full, openstack included: expected to fail offline)" "${NONET[@]}" "$PACKER" validate .

echo "########## missing plugin (empty PACKER_PLUGIN_PATH) ##########"
mkdir -p "$work/empty-plugins"
export PACKER_PLUGIN_PATH="$work/empty-plugins"
run "packer validate . (plugin missing)" "${NONET[@]}" "$PACKER" validate .
run "packer build . (plugin missing)" "${NONET[@]}" "$PACKER" build .
run "packer init . (plugin missing, no network)" "${NONET[@]}" "$PACKER" init .

if [[ $fail == 0 ]]; then echo "OFFLINE CHECK: OK"; else echo "OFFLINE CHECK: FAILED"; fi
exit $fail
