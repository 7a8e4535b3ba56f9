#!/usr/bin/env python3
"""Makes a small OCI image layout for windows-check, or checks an exported
one against it.

  oci-layout.py make DIR      writes the layout, prints its config digest
  oci-layout.py check DIR CONFIG_DIGEST DIFF_ID
                              checks that DIR's image has that config and that
                              its one layer decompresses to that diff id
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile


def blob(root, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(f"{root}/blobs/sha256/{digest}", "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)


def make(root):
    os.makedirs(root + "/blobs/sha256", exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("etc/hostname", b"strata\n"), ("app/run.sh", b"#!/bin/sh\necho hi\n")]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1700000000, 0o644
            tar.addfile(info, io.BytesIO(data))
    layer = buf.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    layer_digest, layer_size = blob(root, gzip.compress(layer, mtime=0))
    config = json.dumps({"architecture": "amd64", "os": "windows", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}, sort_keys=True).encode()
    config_digest, config_size = blob(root, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer_size}]}).encode()
    manifest_digest, manifest_size = blob(root, manifest)
    with open(root + "/index.json", "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}, f)
    with open(root + "/oci-layout", "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    print(config_digest, diff_id)


def read_blob(root, digest):
    with open(f"{root}/blobs/sha256/{digest.split(':', 1)[1]}", "rb") as f:
        return f.read()


def check(root, config_digest, diff_id):
    with open(root + "/index.json") as f:
        index = json.load(f)
    manifest = json.loads(read_blob(root, index["manifests"][0]["digest"]))
    got = manifest["config"]["digest"]
    if got != config_digest:
        sys.exit(f"exported config {got}, expected {config_digest}")
    layer = read_blob(root, manifest["layers"][0]["digest"])
    if layer[:2] == b"\x1f\x8b":
        layer = gzip.decompress(layer)
    got = "sha256:" + hashlib.sha256(layer).hexdigest()
    if got != diff_id:
        sys.exit(f"exported layer is {got} uncompressed, expected {diff_id}")
    print("exported image: same config, same layer")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        check(*sys.argv[2:5])
