#!/usr/bin/env bash
# A real Packer azure-arm build (Packer and the azure plugin from
# hack/packer/setup.sh) against the Azure stand-in: starts the stand-in
# (run.py), seeds a source managed image through the control API, runs
# `packer init` + `packer build -machine-readable` of example.pkr.hcl with no
# network but loopback, then checks the stand-in's state: the managed image
# and the gallery image version (with the azure_tags) exist, and the build's
# temporary resources (VM, OS disk, NIC, virtual network, public IP,
# deployment) are gone. Prints Packer's artifact lines and
# `packer-smoke: N passed, N failed`.
#
#   hack/azure/packer-smoke.sh            # KILN_AZURE_SCHEMAS=sdk to force the SDK route
#   PACKER_SMOKE_KEEP=1 ...               # keep the work directory (logs, state.json)
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
root="$cache_root/packer-current"
packer="$root/bin/packer"
py="$cache_root/venv/bin/python3"
[ -x "$py" ] || py=python3
[ -x "$packer" ] || { echo "packer-smoke: $packer missing: run hack/packer/setup.sh" >&2; exit 1; }
ls "$root"/plugins/github.com/hashicorp/azure/packer-plugin-azure_v1.4.5_* >/dev/null 2>&1 ||
	{ echo "packer-smoke: the azure plugin v1.4.5 is not in $root/plugins: run hack/packer/setup.sh" >&2; exit 1; }
"$here/packer-setup.sh" || exit 1

work="$(mktemp -d)"
standin_pid=""
cleanup() {
	[ -n "$standin_pid" ] && kill "$standin_pid" 2>/dev/null && wait "$standin_pid" 2>/dev/null
	if [ -n "${PACKER_SMOKE_KEEP:-}" ]; then echo "packer-smoke: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }

mkfifo "$work/ready"
"$py" "$here/run.py" --log-dir "$work/logs" >"$work/ready" &
standin_pid=$!
read -r ready <"$work/ready" || { echo "packer-smoke: the stand-in did not start" >&2; exit 1; }
echo "$ready" >"$work/ready.json"
j() { "$py" -c 'import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print(v if isinstance(v, str) else json.dumps(v))' "$work/ready.json" "$1"; }
[ -n "$(j metadata_host 2>/dev/null)" ] || { echo "packer-smoke: no metadata_host in the ready line (packer routes not loaded?): $ready" >&2; exit 1; }
control="$(j control_url)"
rg="$(j resource_group)"

# the source image: a managed image in the build resource group
curl -fsS -X POST "${control}images" -H 'Content-Type: application/json' \
	-d '{"name": "kiln-source", "location": "westeurope", "osType": "Linux", "hyperVGeneration": "V1"}' >/dev/null &&
	ok "seeded managed image kiln-source" || bad "seeding the source image"
curl -fsS -X DELETE "${control}calls" >/dev/null

cp "$here/example.pkr.hcl" "$work/"
cat >"$work/vars.auto.pkrvars.hcl" <<EOF
subscription_id        = "$(j subscription_id)"
tenant_id              = "$(j tenant_id)"
client_id              = "$(j client_id)"
client_secret          = "$(j client_secret)"
metadata_host          = "$(j metadata_host)"
cloud_environment_name = "$(j cloud_environment_name)"
resource_group         = "$rg"
gallery                = "$(j gallery)"
image_definition       = "$(j image_definition)"
source_image           = "kiln-source"
image_name             = "kiln-packer-smoke"
image_version          = "1.2.3"
replication_regions    = ["westeurope", "eastus2"]
ssh_port               = $(j ssh_port 2>/dev/null || echo 22)
communicator           = "${PACKER_SMOKE_COMMUNICATOR:-ssh}"
EOF

export CHECKPOINT_DISABLE=1
export PACKER_CONFIG_DIR="$work/config"
export PACKER_PLUGIN_PATH="$root/plugins"
export SSL_CERT_FILE="$(j tls_ca_file)" # the stand-in's TLS listener (metadata_host)
export PACKER_LOG=1 PACKER_LOG_PATH="$work/packer.log"
unset HTTPS_PROXY HTTP_PROXY https_proxy http_proxy
cd "$work" || exit 1
if "$packer" init . >"$work/init.out" 2>&1; then ok "packer init (offline, plugin from PACKER_PLUGIN_PATH)"; else
	bad "packer init"; cat "$work/init.out"; fi
start=$SECONDS
timeout "${PACKER_SMOKE_TIMEOUT:-600}" "$packer" build -machine-readable . >"$work/build.out" 2>&1
rc=$?
secs=$((SECONDS - start))
if [ $rc = 0 ]; then ok "packer build ($secs s)"; else
	bad "packer build exited $rc after $secs s"
	grep -E ',ui,(error|say|message),' "$work/build.out" | tail -40 | cut -c1-400
fi
echo "--- Packer's artifact (machine-readable)"
grep -E '^[0-9]+,[^,]*,artifact,0,(id|string|builder-id|end),?' "$work/build.out" | cut -d, -f3- | sed 's/^/    /'
echo "---"

curl -fsS "${control}state" >"$work/state.json" || bad "reading the state"
curl -fsS "${control}packer" >"$work/packer-state.json" || bad "reading /_control/packer"
"$py" - "$work/state.json" "$work/build.out" "$(j subscription_id)" "$rg" "$work/packer-state.json" >"$work/checks.out" <<'PY'
import json, sys
state = json.load(open(sys.argv[1]))
ssh = json.load(open(sys.argv[5])).get("ssh") or {}
out = open(sys.argv[2]).read()
sub, rg = sys.argv[3], sys.argv[4]
res = {k.lower(): v for k, v in state["resources"].items()}
checks = []
def check(ok, what):
    checks.append((ok, what))
img_id = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/images/kiln-packer-smoke"
img = res.get(img_id.lower())
check(img is not None and img["body"]["properties"]["provisioningState"] == "Succeeded", f"managed image {img_id} Succeeded")
tags = {"kiln-build": "packer-smoke", "kiln-image": "kiln-packer-smoke"}
check(img is not None and img["body"].get("tags") == tags, f"managed image tags {tags}")
ver_id = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/galleries/kilngallery/images/base/versions/1.2.3"
ver = res.get(ver_id.lower())
check(ver is not None and ver["body"]["properties"]["provisioningState"] == "Succeeded", f"gallery version {ver_id} Succeeded")
check(ver is not None and ver["body"].get("tags") == tags, "gallery version tags " + json.dumps((ver or {}).get("body", {}).get("tags")))
src = (ver or {}).get("body", {}).get("properties", {}).get("storageProfile", {}).get("source", {}).get("id", "")
check(src.lower() == img_id.lower(), f"gallery version source is the managed image ({src})")
regions = sorted(t["name"] for t in (ver or {}).get("body", {}).get("properties", {}).get("publishingProfile", {}).get("targetRegions", []))
check(regions == ["eastus2", "westeurope"], f"gallery version target regions {regions}")
left = sorted(v["kind"] + " " + v["body"]["id"] for v in res.values()
              if v["kind"] in ("virtualMachine", "disk", "networkInterface", "virtualNetwork", "publicIPAddress",
                               "networkSecurityGroup", "deployment"))
check(not left, "temporary resources gone" + ("" if not left else ": " + "; ".join(left)))
c = state["counters"]
check(c["response_validation_failures"] == 0 and c["crashes"] == 0 and c["not_implemented"] == 0,
      f"no stand-in bugs (response_validation_failures={c['response_validation_failures']}, "
      f"crashes={c['crashes']}, not_implemented={c['not_implemented']})")
check(c["request_validation_failures"] == 0, f"no request refused by validation ({c['request_validation_failures']})")
check(f",artifact,0,id,{img_id}" in out or ",artifact,0,id," in out, "Packer printed an artifact id")
logins = ssh.get("logins") or []
check(len(logins) >= 1 and all("/virtualMachines/pkrvm" in x["vm"] for x in logins),
      f"Packer logged in over SSH to the deployed VM with its temporary key ({len(logins)} logins, {ssh.get('refused')} refused)")
uploads = [f for c in ssh.get("commands") or [] for f in c.get("files") or []]
check(any(f["name"].startswith("script_") for f in uploads), "the shell provisioner's script was uploaded (scp): " +
      ", ".join(f"{f['name']} {f['size']} B" for f in uploads))
print("ssh commands: " + " | ".join(c["command"][:80] for c in ssh.get("commands") or []))
calls = state["calls"]
print("calls: " + ", ".join(f"{k} {v}" for k, v in sorted(calls.items())))
for ok, what in checks:
    print(("ok   " if ok else "FAIL ") + what)
sys.exit(sum(1 for ok, _ in checks if not ok))
PY
# a few refusals on the Packer routes (what a wrong client would see)
"$py" - "$work/ready.json" >>"$work/checks.out" <<'PY'
import json, ssl, sys, urllib.error, urllib.parse, urllib.request
r = json.load(open(sys.argv[1]))
base, sub, rg = r["api_url"], r["subscription_id"], r["resource_group"]
def call(method, url, body=None, headers=None, ctx=None):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
ctx = ssl.create_default_context(cafile=r["tls_ca_file"])
st, b = call("GET", f"https://{r['metadata_host']}/metadata/endpoints?api-version=2020-06-01", ctx=ctx)
env = json.loads(b)[0] if st == 200 else {}
check(st == 200 and env.get("name") == r["cloud_environment_name"] and env.get("resourceManager") == base,
      f"metadata over TLS names the stand-in ({st})")
form = lambda **kw: urllib.parse.urlencode(kw).encode()
tok = f"{base}{r['tenant_id']}/oauth2/token?api-version=1.0"
st, b = call("POST", tok, form(grant_type="client_credentials", client_id=r["client_id"], client_secret="wrong",
                               resource=base), {"Content-Type": "application/x-www-form-urlencoded"})
check(st == 401 and b"AADSTS7000215" in b, f"v1 token with a wrong secret: {st} invalid_client")
st, b = call("POST", tok, form(grant_type="client_credentials", client_id=r["client_id"],
                               client_secret=r["client_secret"], resource=base),
             {"Content-Type": "application/x-www-form-urlencoded"})
token = json.loads(b)["access_token"]
auth = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
dep = f"{base}subscriptions/{sub}/resourcegroups/{rg}/providers/Microsoft.Resources/deployments/bad"
tpl = {"$schema": "x", "contentVersion": "1.0.0.0", "resources": [
    {"type": "Microsoft.Network/publicIPAddresses", "apiVersion": "2017-04-01", "name": "ip",
     "location": "[resourceGroup().location]", "properties": {"publicIPAllocationMethod": "Sometimes"}}]}
st, b = call("PUT", dep + "?api-version=2018-02-01", {"properties": {"template": tpl, "mode": "Incremental"}}, auth)
check(st == 400 and b"InvalidTemplate" in b and b"publicIPAllocationMethod" in b,
      f"a template resource outside its model: {st} InvalidTemplate")
st, b = call("PUT", dep + "?api-version=2018-02-01", {"properties": {"template": tpl, "mode": "Incremental",
                                                                     "debug": True}}, auth)
check(st == 400 and b"InvalidRequestContent" in b, f"an undeclared property in a deployment: {st} InvalidRequestContent")
st, b = call("GET", f"{base}subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/x"
             "?api-version=2020-06-01", None, auth)
check(st == 400 and b"NoRegisteredProviderFound" in b, f"a VM GET at an api-version not served: {st} NoRegisteredProviderFound")
PY
cat "$work/checks.out"
pass=$((pass + $(grep -c '^ok ' "$work/checks.out")))
fail=$((fail + $(grep -c '^FAIL ' "$work/checks.out")))
echo "packer-smoke: $pass passed, $fail failed"
[ $fail = 0 ]
