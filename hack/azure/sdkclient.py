#!/usr/bin/env python3
"""Drives the stand-in with Microsoft's own generated clients, azure-mgmt-compute
and azure-mgmt-resource (the pinned versions in requirements.txt, with
azure-core's ARM pollers), as a second opinion on the wire protocol: token,
GET, long-running PUT/PATCH/DELETE polled by ARMPolling (Azure-AsyncOperation,
Location, final GET), paging by nextLink, errors mapped to HttpResponseError
with ARM's error code, and ResourceManagementClient's providers.get.

    python3 sdkclient.py READY_LINE_FILE

Run with the venv's python (hack/azure/setup.sh installs the SDK there).
Prints one line per check and "sdkclient: N passed, N failed" last.
"""

import json
import sys
import time
import urllib.parse
import urllib.request

from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute import models as m
from azure.mgmt.resource.resources import ResourceManagementClient

info = json.load(open(sys.argv[1]))
passed = failed = 0


def check(what, cond):
    global passed, failed
    if cond:
        passed += 1
        print(f"   ok: sdk: {what}")
    else:
        failed += 1
        print(f"   FAILED: sdk: {what}")


class StandinCredential:
    """A TokenCredential that gets its token from the stand-in's Entra ID endpoint."""

    def __init__(self, client_id, secret):
        self.client_id, self.secret = client_id, secret
        self.calls = 0

    def get_token(self, *scopes, **kwargs):
        self.calls += 1
        form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": self.client_id,
                                       "client_secret": self.secret, "scope": " ".join(scopes)}).encode()
        url = f"{info['authority_host']}{info['tenant_id']}/oauth2/v2.0/token"
        with urllib.request.urlopen(urllib.request.Request(url, form)) as r:
            d = json.load(r)
        return AccessToken(d["access_token"], int(time.time()) + d["expires_in"])


cred = StandinCredential(info["client_id"], info["client_secret"])
client = ComputeManagementClient(cred, info["subscription_id"], base_url=info["api_url"].rstrip("/"),
                                 polling_interval=0)
# azure-core refuses bearer tokens over plain http unless told, per request.
kw = {"enforce_https": False}
rg, gal, d = info["resource_group"], info["gallery"], info["image_definition"]
src = f"/subscriptions/{info['subscription_id']}/resourceGroups/{rg}/providers/Microsoft.Compute/images/sdk-src"

g = client.galleries.get(rg, gal, **kw)
check(f"galleries.get: {g.name} in {g.location}, {g.provisioning_state}", g.name == gal and g.location == "westeurope")
img = client.gallery_images.get(rg, gal, d, **kw)
check(f"gallery_images.get: {img.os_type}/{img.os_state}/{img.hyper_v_generation}",
      img.os_type == "Linux" and img.os_state == "Generalized" and img.hyper_v_generation == "V2")
check("gallery_images.list_by_gallery", [i.name for i in client.gallery_images.list_by_gallery(rg, gal, **kw)] == [d])

version = m.GalleryImageVersion(
    location="westeurope", tags={"kiln-build": "sdk"},
    publishing_profile=m.GalleryImageVersionPublishingProfile(
        target_regions=[m.TargetRegion(name="westeurope"), m.TargetRegion(name="eastus2", regional_replica_count=2)],
        end_of_life_date="2099-01-01T00:00:00Z"),
    storage_profile=m.GalleryImageVersionStorageProfile(source=m.GalleryArtifactVersionFullSource(id=src)),
    safety_profile=m.GalleryImageVersionSafetyProfile(block_deletion_before_end_of_life=False))
poller = client.gallery_image_versions.begin_create_or_update(rg, gal, d, "7.0.0", version, **kw)
v = poller.result()
check(f"begin_create_or_update -> {v.provisioning_state} (polled to the end)", v.provisioning_state == "Succeeded")
check("target regions", [t.name for t in v.publishing_profile.target_regions] == ["westeurope", "eastus2"])

upd = m.GalleryImageVersionUpdate(
    tags={"kiln-build": "sdk", "kiln-superseded": "true"},
    publishing_profile=m.GalleryImageVersionPublishingProfile(exclude_from_latest=True),
    storage_profile=m.GalleryImageVersionStorageProfile())
v = client.gallery_image_versions.begin_update(rg, gal, d, "7.0.0", upd, **kw).result()
check(f"begin_update -> {v.provisioning_state}, excludeFromLatest={v.publishing_profile.exclude_from_latest}",
      v.provisioning_state == "Succeeded" and v.publishing_profile.exclude_from_latest is True
      and v.tags == {"kiln-build": "sdk", "kiln-superseded": "true"})
v = client.gallery_image_versions.get(rg, gal, d, "7.0.0", expand="ReplicationStatus", **kw)
check("get with expand=ReplicationStatus",
      v.replication_status.aggregated_state == "Completed" and len(v.replication_status.summary) == 2)

for name in ("7.0.1", "7.0.2", "7.0.3"):
    client.gallery_image_versions.begin_create_or_update(rg, gal, d, name, version, **kw).result()
req = urllib.request.Request(info["control_url"] + "config", json.dumps({"page_size": 2}).encode(),
                             {"Content-Type": "application/json"})
urllib.request.urlopen(req).read()
names = [x.name for x in client.gallery_image_versions.list_by_gallery_image(rg, gal, d, **kw)]
check(f"list_by_gallery_image over nextLink pages (page size 2): {names}", names == ["7.0.0", "7.0.1", "7.0.2", "7.0.3"])

client.gallery_image_versions.begin_delete(rg, gal, d, "7.0.1", **kw).result()
try:
    client.gallery_image_versions.get(rg, gal, d, "7.0.1", **kw)
    check("begin_delete removed it", False)
except ResourceNotFoundError as e:
    check(f"begin_delete, then get -> ResourceNotFoundError ({e.error.code})", e.error.code == "ResourceNotFound")

try:
    bad = m.GalleryImageVersion(location="westeurope", storage_profile=m.GalleryImageVersionStorageProfile(
        source=m.GalleryArtifactVersionFullSource(id=src)),
        publishing_profile=m.GalleryImageVersionPublishingProfile(storage_account_type="Premium_XYZ"))
    client.gallery_image_versions.begin_create_or_update(rg, gal, d, "7.1.0", bad, **kw).result()
    check("a bad enum value is refused", False)
except HttpResponseError as e:
    check(f"a bad enum value -> {e.status_code} {e.error.code}", e.status_code == 400 and e.error.code == "InvalidRequestContent")

urllib.request.urlopen(urllib.request.Request(
    info["control_url"] + "fail-next", json.dumps({"operation": "create", "code": "ReplicationFailed"}).encode(),
    {"Content-Type": "application/json"})).read()
try:
    client.gallery_image_versions.begin_create_or_update(rg, gal, d, "7.2.0", version, **kw).result()
    check("a failed operation raises", False)
except HttpResponseError as e:
    check(f"a failed operation -> HttpResponseError ({e.error.code if e.error else e})",
          e.error is not None and e.error.code == "ReplicationFailed")

image = m.Image(location="westeurope", tags={"kiln-build": "sdk"}, hyper_v_generation="V2",
                storage_profile=m.ImageStorageProfile(os_disk=m.ImageOSDisk(
                    os_type="Linux", os_state="Generalized", blob_uri="https://kiln.blob.core.windows.net/vhds/x.vhd")))
i = client.images.begin_create_or_update(rg, "sdk-image", image, **kw).result()
check(f"images.begin_create_or_update -> {i.provisioning_state}", i.provisioning_state == "Succeeded")
i = client.images.begin_update(rg, "sdk-image", m.ImageUpdate(tags={"kiln-keep": "true"}), **kw).result()
check("images.begin_update (tags)", i.tags == {"kiln-keep": "true"} and i.provisioning_state == "Succeeded")
check("images.list_by_resource_group", "sdk-image" in [x.name for x in client.images.list_by_resource_group(rg, **kw)])
client.images.begin_delete(rg, "sdk-image", **kw).result()
check("images.begin_delete", "sdk-image" not in [x.name for x in client.images.list_by_resource_group(rg, **kw)])
rc = ResourceManagementClient(cred, info["subscription_id"], base_url=info["api_url"].rstrip("/"))
p = rc.providers.get("Microsoft.Compute", **kw)
types = {t.resource_type: t.locations for t in p.resource_types}
check(f"providers.get('Microsoft.Compute'): {p.registration_state}, {sorted(types)}",
      p.namespace == "Microsoft.Compute" and p.registration_state == "Registered"
      and sorted(types) == ["galleries", "galleries/images", "galleries/images/versions", "images"]
      and types["images"][:2] == ["West Europe", "East US 2"])
try:
    rc.providers.get("Microsoft.Nothing", **kw)
    check("providers.get of an unknown namespace raises", False)
except ResourceNotFoundError as e:
    check(f"providers.get of an unknown namespace -> ResourceNotFoundError ({e.error.code})",
          e.error.code == "InvalidResourceNamespace")
check(f"tokens fetched by the credential: {cred.calls}", cred.calls >= 1)
print(f"sdkclient: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
