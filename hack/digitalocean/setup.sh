#!/usr/bin/env bash
# Installs what the DigitalOcean stand-in needs (see README.md beside this file)
# into "$KILN_CACHE_DIR/digitalocean" (default ~/.cache/kiln/digitalocean):
#   prism-5.14.2/   Prism and js-yaml, pinned with package-lock.json (`npm ci`)
#   spec.json       DigitalOcean's bundled OpenAPI spec, as JSON
# Debian packages only if missing: nodejs + npm, python3, curl.
# Safe to run again: each step is skipped when its stamp matches.
# KILN_DO_SPEC: another copy of the spec. A bundled file is used as it is; a
# multi-file one (the upstream `specification/DigitalOcean-public.v2.yaml`) is
# bundled first with @redocly/cli 2.77.0.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
dir="$cache_root/digitalocean"
prism_version="5.14.2"
redocly_version="2.77.0"
spec_src="${KILN_DO_SPEC:-$here/../../../shared/specs/digitalocean/DigitalOcean-public.v2.bundled.yaml}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
start=$(date +%s.%N)
say() { echo "setup(digitalocean): $*" >&2; }

# Node >= 18.20.1 (Prism 5.14.2's engines; Debian 12's nodejs is 18.20.4).
node_ok() {
	command -v node >/dev/null && command -v npm >/dev/null &&
		node -e 'const [a,b,c]=process.versions.node.split(".").map(Number);process.exit(a>18||(a==18&&(b>20||(b==20&&c>=1)))?0:1)'
}
missing=()
node_ok || missing+=(nodejs npm)
command -v python3 >/dev/null || missing+=(python3)
command -v curl >/dev/null || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
	say "installing Debian packages: ${missing[*]}"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
	node_ok || { say "node $(node --version 2>/dev/null) is older than 18.20.1"; exit 1; }
fi

mkdir -p "$dir"

# Prism + js-yaml, every transitive version pinned by the lock file.
tools="$dir/prism-$prism_version"
want="$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$tools/node_modules/.bin/prism" ] || [ "$(cat "$tools/.stamp" 2>/dev/null)" != "$want" ]; then
	say "installing Prism $prism_version into $tools"
	rm -rf "$tools"
	mkdir -p "$tools"
	cp "$here/package.json" "$here/package-lock.json" "$tools/"
	(cd "$tools" && npm ci --no-audit --no-fund --loglevel=error >&2)
	"$tools/node_modules/.bin/prism" --version >/dev/null
	echo "$want" >"$tools/.stamp"
fi

# The spec as one JSON file: Prism loads it, and the stand-in reads it for its
# own checks (Python's standard library has no YAML parser).
# Without a copy beside the repository, the same spec (the same upstream
# commit) comes from crates.io, where the `rsdo` crate vendors it: fetched,
# never built.
rsdo_version="0.1.20261001"
if [ -z "${KILN_DO_SPEC:-}" ] && [ ! -f "$spec_src" ]; then
	fetch="$dir/rsdo-fetch"
	mkdir -p "$fetch/src"
	printf '[package]\nname = "kiln-do-spec"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\nrsdo = "=%s"\n\n[workspace]\n' "$rsdo_version" >"$fetch/Cargo.toml"
	: >"$fetch/src/lib.rs"
	(cd "$fetch" && cargo fetch --quiet) || { say "fetching the rsdo crate (DigitalOcean's spec) failed"; exit 1; }
	spec_src="$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path "*/rsdo-$rsdo_version/spec/specification/DigitalOcean-public.v2.yaml" -print -quit)"
	say "using DigitalOcean's spec from the rsdo $rsdo_version crate: $spec_src"
fi
[ -f "$spec_src" ] || {
	say "no DigitalOcean spec at $spec_src (shared/specs/digitalocean beside the repo, or the rsdo crate); set KILN_DO_SPEC"
	exit 1
}
want="$(sha256sum "$spec_src" | cut -d' ' -f1) $(cat "$tools/.stamp")"
if [ ! -s "$dir/spec.json" ] || [ "$(cat "$dir/spec.json.stamp" 2>/dev/null)" != "$want" ]; then
	src="$spec_src"
	# A reference to another file (`$ref: 'resources/...yaml#/...'`) means the
	# multi-file layout: bundle it first.
	if grep -qE "\\\$ref: *['\"]?[^'\"#[:space:]]" "$spec_src"; then
		redocly="$dir/redocly-$redocly_version"
		if [ ! -x "$redocly/node_modules/.bin/redocly" ]; then
			say "installing @redocly/cli $redocly_version into $redocly (the spec is split into files)"
			mkdir -p "$redocly"
			npm install --prefix "$redocly" --no-audit --no-fund --loglevel=error "@redocly/cli@$redocly_version" >&2
		fi
		say "bundling $spec_src"
		src="$dir/bundled.yaml"
		"$redocly/node_modules/.bin/redocly" bundle "$spec_src" -o "$src" >&2
	fi
	say "converting $src to $dir/spec.json"
	NODE_PATH="$tools/node_modules" node -e '
		const fs = require("fs"), yaml = require("js-yaml");
		const doc = yaml.load(fs.readFileSync(process.argv[1], "utf8"));
		if (!doc || !doc.openapi || !doc.paths) { console.error("not an OpenAPI document"); process.exit(1); }
		const text = JSON.stringify(doc);
		const external = text.match(/"\$ref":"[^#"][^"]*"/);
		if (external) { console.error("still has an external $ref: " + external[0]); process.exit(1); }
		fs.writeFileSync(process.argv[2], text);
		console.error(`openapi ${doc.openapi}, ${Object.keys(doc.paths).length} paths`);
	' "$src" "$dir/spec.json.tmp"
	mv "$dir/spec.json.tmp" "$dir/spec.json"
	echo "$want" >"$dir/spec.json.stamp"
fi

say "ready in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}')s: $dir"
