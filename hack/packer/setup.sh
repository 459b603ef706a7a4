#!/usr/bin/env bash
# Build a current Packer and the cloud plugins kiln uses from their Go modules
# (Go module proxy only, no GitHub release downloads), and install the plugins
# into a plugin directory that `packer init` can use offline.
#
# Idempotent: a stamp file records what was built; a second run exits at once.
#
# Layout (CACHE = ${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}):
#   $CACHE/packer-current/bin/packer        the Packer binary
#   $CACHE/packer-current/plugins/          PACKER_PLUGIN_PATH (installed plugins)
#   $CACHE/packer-current/build/            plugin binaries as built (before install)
#   $CACHE/packer-current/stamp             versions that were built
#
# Env overrides: PACKER_VERSION, PLUGIN_<NAME>_VERSION (e.g. PLUGIN_AMAZON_VERSION=v1.8.1),
# KILN_PACKER_PLUGINS (space separated names, default: all available ones),
# KILN_PACKER_FORCE=1 to rebuild regardless of the stamp.
set -euo pipefail

CACHE="${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
ROOT="$CACHE/packer-current"
STAMP="$ROOT/stamp"

# Versions: the newest that the Go module proxy reachable here serves as a
# downloadable module (see README.md: several newer tags are refused by it).
PACKER_VERSION="${PACKER_VERSION:-v1.16.0}"
declare -A PLUGIN_VERSION=(
  [amazon]="${PLUGIN_AMAZON_VERSION:-v1.8.1}"
  [googlecompute]="${PLUGIN_GOOGLECOMPUTE_VERSION:-v1.2.7}"
  # Azure's v2.x tags are not valid Go module versions (the module path has no
  # /v2 suffix), so v1.4.5 is the newest the Go module proxy can give.
  [azure]="${PLUGIN_AZURE_VERSION:-v1.4.5}"
  [openstack]="${PLUGIN_OPENSTACK_VERSION:-v1.1.2}"
  # No version of packer-plugin-digitalocean is served by the proxy here (403
  # on every .zip tried). Set PLUGIN_DIGITALOCEAN_VERSION to try one.
  [digitalocean]="${PLUGIN_DIGITALOCEAN_VERSION:-}"
)
PLUGINS="${KILN_PACKER_PLUGINS:-amazon googlecompute azure openstack digitalocean}"

export GOFLAGS=-mod=mod
export CGO_ENABLED=0
export CHECKPOINT_DISABLE=1

stamp_text() {
  printf 'go=%s\n' "$(go env GOVERSION)"
  printf 'packer=%s\n' "$PACKER_VERSION"
  for p in $PLUGINS; do printf 'plugin.%s=%s\n' "$p" "${PLUGIN_VERSION[$p]}"; done
}

# Fast path: no go invocation (go env costs ~10 ms, fine), compare the stamp.
want="$(stamp_text)"
if [[ "${KILN_PACKER_FORCE:-0}" != 1 && -f "$STAMP" && -x "$ROOT/bin/packer" ]] \
   && [[ "$(cat "$STAMP")" == "$want" ]]; then
  echo "packer-current up to date ($ROOT):"
  sed 's/^/  /' "$STAMP"
  exit 0
fi

mkdir -p "$ROOT/bin" "$ROOT/plugins" "$ROOT/build" "$ROOT/src"
NICE=(nice -n 10)

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
TIMES=()

# Fetch a module's source through the proxy and copy it to a writable dir
# (go install pkg@version refuses modules whose go.mod has `replace`
# directives, which Packer and every plugin here have, so we build inside a
# copy of the module instead; that honours the replace and go.sum exactly).
fetch_src() { # module version -> prints writable source dir
  local mod="$1" ver="$2" dir json
  json="$(go mod download -json "$mod@$ver")" || { echo "$json" >&2; return 1; }
  dir="$(sed -n 's/^\t"Dir": "\(.*\)",$/\1/p' <<<"$json")"
  if [[ -z "$dir" ]]; then echo "$json" >&2; return 1; fi
  local dst="$ROOT/src/$(basename "$mod")@$ver"
  if [[ ! -d "$dst" ]]; then
    rm -rf "$dst.tmp" && cp -r "$dir" "$dst.tmp" && chmod -R u+w "$dst.tmp" && mv "$dst.tmp" "$dst"
  fi
  echo "$dst"
}

# --- 1. Packer ------------------------------------------------------------
t0=$(now)
src="$(fetch_src github.com/hashicorp/packer "$PACKER_VERSION")"
# Packer >= 1.10 reads its version from the embedded version/VERSION file, so
# no -X is needed for the version itself; GitCommit is informative only.
(cd "$src" && "${NICE[@]}" go build -trimpath \
    -ldflags "-s -w -X github.com/hashicorp/packer/version.GitCommit=module-$PACKER_VERSION" \
    -o "$ROOT/bin/packer.tmp" .)
mv "$ROOT/bin/packer.tmp" "$ROOT/bin/packer"
rm -rf "$src"
TIMES+=("packer $PACKER_VERSION: $(elapsed "$t0")s")
echo "built $("$ROOT/bin/packer" version | head -1) in $(elapsed "$t0")s"

# --- 2. Plugins -----------------------------------------------------------
export PACKER_PLUGIN_PATH="$ROOT/plugins"
built=()
for p in $PLUGINS; do
  ver="${PLUGIN_VERSION[$p]}"
  if [[ -z "$ver" ]]; then
    echo "SKIP plugin $p: no version served by the Go module proxy (set PLUGIN_${p^^}_VERSION)" >&2
    TIMES+=("plugin $p: skipped (not available)")
    continue
  fi
  mod="github.com/hashicorp/packer-plugin-$p"
  t0=$(now)
  src="$(fetch_src "$mod" "$ver")"
  # Release builds (.goreleaser.yml) stamp:
  #   -X <module>/version.Version={{.Version}} -X <module>/version.VersionPrerelease=
  # Without it some tags (e.g. azure v1.4.5) report "<ver>-dev", which
  # `required_plugins` version constraints do not match.
  (cd "$src" && "${NICE[@]}" go build -trimpath \
      -ldflags "-s -w -X $mod/version.Version=${ver#v} -X $mod/version.VersionPrerelease=" \
      -o "$ROOT/build/packer-plugin-$p.tmp" .)
  mv "$ROOT/build/packer-plugin-$p.tmp" "$ROOT/build/packer-plugin-$p"
  tb=$(elapsed "$t0")
  t1=$(now)
  # drop other versions of this plugin so only the stamped one is offered
  rm -rf "$ROOT/plugins/github.com/hashicorp/$p"
  "$ROOT/bin/packer" plugins install --path "$ROOT/build/packer-plugin-$p" "github.com/hashicorp/$p"
  TIMES+=("plugin $p $ver: build ${tb}s, install $(elapsed "$t1")s")
  rm -rf "$src" "$ROOT/build/packer-plugin-$p"
  built+=("$p")
done

stamp_text > "$STAMP"

echo
echo "packer-current in $ROOT"
"$ROOT/bin/packer" version | head -1
"$ROOT/bin/packer" plugins installed
echo "timings:"
printf '  %s\n' "${TIMES[@]}"
echo "disk: $(du -sh "$ROOT" | cut -f1) in $ROOT"
