#!/usr/bin/env bash
# Finds or builds the test control plane (kube-apiserver, etcd,
# kube-controller-manager) and prints the directory that holds it.
#
# - KUBEBUILDER_ASSETS, when set, wins: it must already hold the binaries.
# - Otherwise the binaries are built from the Go modules under hack/testenv/
#   with the machine's Go toolchain and cached outside the source tree, in
#   ${KILN_CACHE_DIR:-~/.cache/kiln}/testenv/<versions>-<go.sum hash>/.
# Progress goes to stderr; stdout carries only the directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bins=(kube-apiserver etcd kube-controller-manager)

have_all() {
	local dir="$1" b
	for b in "${bins[@]}"; do
		[ -x "$dir/$b" ] || return 1
	done
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
	if ! have_all "$KUBEBUILDER_ASSETS"; then
		echo "testenv: KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks one of: ${bins[*]}" >&2
		exit 1
	fi
	echo "$KUBEBUILDER_ASSETS"
	exit 0
fi

command -v go >/dev/null || { echo "testenv: the Go toolchain is needed to build the control plane" >&2; exit 1; }

k8s_version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/testenv/kube/go.mod")"
etcd_version="$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3}' "$here/testenv/etcd/go.mod")"
stamp="$(cat "$here"/testenv/*/go.mod "$here"/testenv/*/go.sum "$here"/testenv/etcd/main.go | sha256sum | cut -c1-12)"
cache_root="${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
dir="$cache_root/testenv/k8s-$k8s_version-etcd-$etcd_version-$stamp"

if have_all "$dir"; then
	echo "$dir"
	exit 0
fi

mkdir -p "$cache_root/testenv"
tmp="$(mktemp -d "$cache_root/testenv/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

export GOFLAGS="-buildvcs=false -mod=mod" CGO_ENABLED=0
minor="${k8s_version#v1.}"; minor="${minor%%.*}"
ver="k8s.io/component-base/version"
ldflags="-s -w -X $ver.gitVersion=$k8s_version -X $ver.gitMajor=1 -X $ver.gitMinor=$minor -X $ver.gitTreeState=clean"

echo "testenv: building kube-apiserver and kube-controller-manager $k8s_version (first run only, several minutes)" >&2
(cd "$here/testenv/kube" && go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
	k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager)
echo "testenv: building etcd $etcd_version" >&2
(cd "$here/testenv/etcd" && go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" .)

have_all "$tmp"
rm -rf "$dir"
mv "$tmp" "$dir"
trap - EXIT
echo "testenv: cached in $dir" >&2
echo "$dir"
