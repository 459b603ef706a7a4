#!/usr/bin/env bash
# Build a current Packer and the cloud plugins kiln uses from their Go modules
# (Go module proxy only, no GitHub release downloads), and install the plugins
# into a plugin directory that `packer init` can use offline.
#
# Idempotent: a stamp file records what was built; a run with a matching
# stamp prints one line and exits at once. When the stamp differs, only the
# parts whose line changed (or whose files are gone) are built again.
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
  # The plugin moved to github.com/digitalocean; the proxy here serves v1.4.1
  # of that module (v1.4.2, v1.4.0, v1.3.0, v1.2.0 and every hashicorp/...
  # tag tried are refused). KILN_PACKER_PLUGINS leaves a plugin out.
  [digitalocean]="${PLUGIN_DIGITALOCEAN_VERSION:-v1.4.1}"
)
# Go module of each plugin (default github.com/hashicorp/packer-plugin-<name>).
declare -A PLUGIN_MODULE=(
  [digitalocean]="github.com/digitalocean/packer-plugin-digitalocean"
)
# Sources a plugin is installed as, i.e. what `required_plugins` may name
# (default github.com/hashicorp/<name>). DigitalOcean's current docs say
# github.com/digitalocean/digitalocean; templates written before the move say
# github.com/hashicorp/digitalocean. Both get the same binary.
declare -A PLUGIN_SOURCES=(
  [digitalocean]="github.com/digitalocean/digitalocean github.com/hashicorp/digitalocean"
)
PLUGINS="${KILN_PACKER_PLUGINS:-amazon googlecompute azure openstack digitalocean}"

export GOFLAGS=-mod=mod
export CGO_ENABLED=0
export CHECKPOINT_DISABLE=1

module_of() { echo "${PLUGIN_MODULE[$1]:-github.com/hashicorp/packer-plugin-$1}"; }
sources_of() { echo "${PLUGIN_SOURCES[$1]:-github.com/hashicorp/$1}"; }

GO_VERSION="$(go env GOVERSION)"
stamp_text() {
  printf 'go=%s\n' "$GO_VERSION"
  printf 'packer=%s\n' "$PACKER_VERSION"
  for p in $PLUGINS; do printf 'plugin.%s=%s\n' "$p" "${PLUGIN_VERSION[$p]}"; done
}
summary() {
  local s="packer $PACKER_VERSION; plugins:"
  for p in $PLUGINS; do s+=" $p ${PLUGIN_VERSION[$p]:-(none)}"; done
  echo "$s"
}

# Fast path: compare the stamp; one line, on stderr like the other setups.
want="$(stamp_text)"
if [[ "${KILN_PACKER_FORCE:-0}" != 1 && -f "$STAMP" && -x "$ROOT/bin/packer" ]] \
   && [[ "$(cat "$STAMP")" == "$want" ]]; then
  echo "setup(packer): up to date in $ROOT ($(summary))" >&2
  exit 0
fi

# What the last run built, by stamp key.
declare -A HAVE=()
if [[ "${KILN_PACKER_FORCE:-0}" != 1 && -f "$STAMP" ]]; then
  while IFS='=' read -r k v; do [[ -n "$k" ]] && HAVE[$k]="$v"; done < "$STAMP"
fi
# A new Go rebuilds everything.
[[ "${HAVE[go]:-}" == "$GO_VERSION" ]] || HAVE=()
HAVE[go]="$GO_VERSION"
write_stamp() { # what is built now, in the stamp's order
  {
    printf 'go=%s\n' "$GO_VERSION"
    [[ -n "${HAVE[packer]:-}" ]] && printf 'packer=%s\n' "${HAVE[packer]}"
    for p in $PLUGINS; do
      [[ -v "HAVE[plugin.$p]" ]] && printf 'plugin.%s=%s\n' "$p" "${HAVE[plugin.$p]}"
    done
  } > "$STAMP.tmp" && mv "$STAMP.tmp" "$STAMP"
}

mkdir -p "$ROOT/bin" "$ROOT/plugins" "$ROOT/build" "$ROOT/src"
NICE=(nice -n 10)

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
TIMES=()
T_ALL=$(now)

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
if [[ "${HAVE[packer]:-}" == "$PACKER_VERSION" && -x "$ROOT/bin/packer" ]]; then
  TIMES+=("packer $PACKER_VERSION: up to date")
else
  echo "setup(packer): building Packer $PACKER_VERSION from its Go module (several minutes when cold)" >&2
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
  HAVE[packer]="$PACKER_VERSION"
  write_stamp
fi

# --- 2. Plugins -----------------------------------------------------------
export PACKER_PLUGIN_PATH="$ROOT/plugins"
export PACKER_CONFIG_DIR="$ROOT/build/config"   # keep ~/.config/packer out of it
for p in $PLUGINS; do
  ver="${PLUGIN_VERSION[$p]}"
  mod="$(module_of "$p")"
  if [[ -z "$ver" ]]; then
    echo "SKIP plugin $p: no version given (set PLUGIN_${p^^}_VERSION)" >&2
    for s in $(sources_of "$p"); do rm -rf "${ROOT:?}/plugins/$s"; done
    TIMES+=("plugin $p: skipped (no version)")
    HAVE[plugin.$p]=""
    write_stamp
    continue
  fi
  installed=1
  for s in $(sources_of "$p"); do
    compgen -G "$ROOT/plugins/$s/packer-plugin-*_v${ver#v}_*" >/dev/null || installed=0
  done
  if [[ "${HAVE[plugin.$p]:-}" == "$ver" && $installed == 1 ]]; then
    TIMES+=("plugin $p $ver: up to date")
    continue
  fi
  echo "setup(packer): building plugin $p $ver ($mod)" >&2
  t0=$(now)
  src="$(fetch_src "$mod" "$ver")"
  # Release builds (.goreleaser.yml) stamp:
  #   -X <module>/version.Version={{.Version}} -X <module>/version.VersionPrerelease=
  # Without it some tags (azure v1.4.5, digitalocean v1.4.1) report
  # "<ver>-dev", which `required_plugins` version constraints do not match.
  (cd "$src" && "${NICE[@]}" go build -trimpath \
      -ldflags "-s -w -X $mod/version.Version=${ver#v} -X $mod/version.VersionPrerelease=" \
      -o "$ROOT/build/packer-plugin-$p.tmp" .)
  mv "$ROOT/build/packer-plugin-$p.tmp" "$ROOT/build/packer-plugin-$p"
  tb=$(elapsed "$t0")
  t1=$(now)
  for s in $(sources_of "$p"); do
    # drop other versions of this plugin so only the stamped one is offered
    rm -rf "${ROOT:?}/plugins/$s"
    "$ROOT/bin/packer" plugins install --path "$ROOT/build/packer-plugin-$p" "$s"
  done
  TIMES+=("plugin $p $ver: build ${tb}s, install $(elapsed "$t1")s")
  rm -rf "$src" "$ROOT/build/packer-plugin-$p"
  HAVE[plugin.$p]="$ver"
  write_stamp
done
rm -rf "$ROOT/build/config"

echo
echo "packer-current in $ROOT"
"$ROOT/bin/packer" version | head -1
"$ROOT/bin/packer" plugins installed
echo "timings:"
printf '  %s\n' "${TIMES[@]}"
echo "  total: $(elapsed "$T_ALL")s"
echo "disk: $(du -sh "$ROOT" | cut -f1) in $ROOT"
