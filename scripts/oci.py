#!/usr/bin/env python3
"""Package callback_guard.wasm as an OCI image that Istio and Envoy Gateway can pull.

Why: Istio's WasmPlugin and Envoy Gateway's EnvoyExtensionPolicy fetch Wasm modules
from OCI registries (`oci://...`), and `docker load` is the usual way to get an image
into a local daemon before `docker push`. This script builds that image offline, with
the Python standard library only, and deterministically: the same wasm bytes always
give byte-identical files and therefore the same digests.

    python3 scripts/oci.py build  --wasm PATH --out DIR [--tag NAME:VERSION]
    python3 scripts/oci.py verify --layout DIR/layout --wasm PATH [--tar DIR/<name>.tar]

`build` writes:

    DIR/layout/                      an OCI image layout (image-spec v1.0)
        oci-layout                   {"imageLayoutVersion":"1.0.0"}
        index.json                   -> the manifest; ref.name annotation = VERSION
        blobs/sha256/<manifest>      application/vnd.oci.image.manifest.v1+json
        blobs/sha256/<config>        application/vnd.oci.image.config.v1+json, linux/amd64
        blobs/sha256/<layer>         application/vnd.oci.image.layer.v1.tar+gzip, holding
                                     exactly one file: plugin.wasm (0644, uid/gid 0, mtime 0)
    DIR/callback-guard-wasm.tar      the layout files plus a docker-archive manifest.json, as
                                     `docker save` of Docker >= 25 writes; `docker load -i`
                                     accepts it (older daemons read only manifest.json)

That is the "compat" variant of the solo-io Wasm image spec, which the fetchers of Istio
(pkg/wasm/imagefetcher.go) and Envoy Gateway (internal/wasm/imagefetcher.go) accept.
The config says linux/amd64 rather than wasip1: `docker load` refuses an OS it cannot
run, and go-containerregistry picks linux/amd64 out of an index by default.

Push DIR/layout as is (skopeo copy oci:DIR/layout docker://..., crane push, oras cp) to
keep the printed manifest digest: `docker push` of a loaded image writes a Docker schema 2
manifest with its own gzip of the layer, which gives another digest (the fetchers accept
that form too).

The manifest does not depend on --tag (only index.json and manifest.json do), so the
manifest digest, which Istio and Envoy Gateway pin as `sha256`, is a function of the
wasm bytes alone. Determinism holds for a given zlib: another zlib version may compress
differently, which changes the layer digest (never the diff_id or the wasm sha256).

`verify` re-checks a layout the way those fetchers read it (see `fetch_wasm`); the test
scripts/test-oci.sh runs it.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
# go-containerregistry pkg/v1/types: DockerManifestSchema2, DockerLayer.
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# solo-io "oci" variant (two layers, the second a raw module).
MT_WASM_ARTIFACT_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"

WASM_NAME = "plugin.wasm"  # the file name both fetchers look for
TAR_NAME = "callback-guard-wasm.tar"
DEFAULT_TAG = "callback-guard-wasm:latest"
TITLE = "callback-guard"
GZIP_LEVEL = 9
# Envoy Gateway internal/wasm/httpfetcher.go: maxWasmSize, the cap on the decompressed
# layer stream in extractWasmPluginBinary (Istio has no cap).
EG_MAX_WASM_SIZE = 256 * 1024 * 1024


class VerifyError(Exception):
    """A layout that a fetcher, docker or the spec would reject."""


# ---------------------------------------------------------------- deterministic bytes


def canonical_json(obj) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the same object always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes) -> dict:
    return {"mediaType": media_type, "digest": "sha256:" + sha256_hex(data), "size": len(data)}


def tar_bytes(entries: list[tuple[str, bytes | None]]) -> bytes:
    """A USTAR tar of (name, data) in the given order; data None makes a directory.

    Every header is fixed: mode 0644 (0755 for directories), uid/gid 0, empty
    uname/gname, mtime 0, so nothing about the build machine or time leaks in.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.type = tarfile.REGTYPE
                info.mode = 0o644
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """gzip with mtime 0, no file name in the header and a fixed level."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=buf, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def docker_image_name(tag: str) -> str:
    """The fully qualified name Docker gives a short tag (io.containerd.image.name)."""
    first, _, rest = tag.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return tag
    return ("docker.io/" if rest else "docker.io/library/") + tag


def split_tag(tag: str) -> tuple[str, str]:
    """NAME:VERSION -> (NAME, VERSION); a ':' inside a registry host:port is not a tag."""
    name, sep, version = tag.rpartition(":")
    if not sep or "/" in version or not name or not version:
        raise SystemExit(f"--tag must be NAME:VERSION, got {tag!r}")
    return name, version


# ---------------------------------------------------------------- build


def build_image(wasm: bytes, tag: str) -> dict:
    """All blobs and files of the image, in memory, plus the digests worth printing."""
    _, version = split_tag(tag)

    layer_tar = tar_bytes([(WASM_NAME, wasm)])
    layer = gzip_bytes(layer_tar)
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha256_hex(layer_tar)]},
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": descriptor(MT_CONFIG, config),
            "layers": [descriptor(MT_LAYER, layer)],
            # Tag-independent on purpose: the manifest digest depends on the wasm only.
            "annotations": {"org.opencontainers.image.title": TITLE},
        }
    )
    manifest_desc = descriptor(MT_MANIFEST, manifest)
    manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
    manifest_desc["annotations"] = {
        "io.containerd.image.name": docker_image_name(tag),
        "org.opencontainers.image.ref.name": version,
    }
    index = canonical_json({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [manifest_desc]})
    oci_layout = canonical_json({"imageLayoutVersion": "1.0.0"})

    blobs = {sha256_hex(b): b for b in (config, layer, manifest)}
    layout_files = {"oci-layout": oci_layout, "index.json": index}
    layout_files.update({f"blobs/sha256/{h}": b for h, b in blobs.items()})
    docker_manifest = canonical_json(
        [
            {
                "Config": f"blobs/sha256/{sha256_hex(config)}",
                "RepoTags": [tag],
                "Layers": [f"blobs/sha256/{sha256_hex(layer)}"],
            }
        ]
    )
    tar_files = dict(layout_files, **{"manifest.json": docker_manifest})
    entries: list[tuple[str, bytes | None]] = [("blobs/", None), ("blobs/sha256/", None)]
    entries += sorted(tar_files.items())
    return {
        "layout_files": layout_files,
        "tar": tar_bytes(entries),
        "manifest_digest": "sha256:" + sha256_hex(manifest),
        "wasm_sha256": sha256_hex(wasm),
        "config_digest": "sha256:" + sha256_hex(config),
        "sizes": {"wasm": len(wasm), "layer": len(layer), "layer_tar": len(layer_tar)},
    }


def cmd_build(args) -> int:
    wasm = Path(args.wasm).read_bytes()
    if not is_valid_wasm_binary(wasm):
        raise SystemExit(f"{args.wasm}: not a Wasm module (no \\0asm header)")
    image = build_image(wasm, args.tag)

    out = Path(args.out)
    layout = out / "layout"
    if layout.exists():
        shutil.rmtree(layout)  # no stale blobs from an earlier build
    for rel, data in image["layout_files"].items():
        path = layout / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    tar_path = out / TAR_NAME
    tar_path.write_bytes(image["tar"])

    s = image["sizes"]
    print(f"wrote {layout}/ (OCI image layout) and {tar_path} ({len(image['tar'])} bytes, for docker load)")
    print(f"image:           {args.tag}")
    print(f"sizes:           wasm {s['wasm']} bytes, layer {s['layer']} bytes gzip ({s['layer_tar']} tar)")
    print(f"config digest:   {image['config_digest']}  (docker's image ID)")
    print(f"manifest digest: {image['manifest_digest']}")
    print("                 pin this one: Istio WasmPlugin spec.sha256 / Envoy Gateway")
    print("                 wasm.code.image.sha256 take its hex part, or use url NAME@sha256:...")
    print("                 It holds when the layout is pushed as is (skopeo copy oci:DIR/layout,")
    print("                 crane push, oras cp); `docker push` after `docker load` writes its own")
    print("                 manifest and gzip, so pin the digest docker push prints instead.")
    print(f"wasm sha256:     {image['wasm_sha256']}")
    print("                 the module's own hash: Envoy's vm_config.code.remote.sha256 when")
    print("                 Envoy fetches plugin.wasm over HTTP (Envoy Gateway http source too)")
    return 0


# ---------------------------------------------------------------- fetcher rules


def is_valid_wasm_binary(b: bytes) -> bool:
    """Istio pkg/wasm/cache.go and Envoy Gateway internal/wasm/cache.go: isValidWasmBinary."""
    return len(b) >= 8 and b[:4] == b"\x00asm"


def go_base(name: str) -> str:
    """Go's filepath.Base on Linux: trailing slashes dropped, then the last element."""
    if not name:
        return "."
    name = name.rstrip("/")
    if not name:
        return "/"
    return name.rsplit("/", 1)[-1]


def extract_wasm_plugin_binary(layer: bytes) -> bytes:
    """imagefetcher.go extractWasmPluginBinary (Istio and Envoy Gateway, same code).

    The layer must gunzip (gzip.NewReader); walk the tar and return the first entry,
    whatever its type, whose filepath.Base is "plugin.wasm", reading h.Size bytes.
    Envoy Gateway caps the decompressed stream at maxWasmSize (256 MiB).
    """
    try:
        raw = gzip.decompress(layer)
    except (OSError, EOFError) as e:
        raise VerifyError(f"failed to parse layer as tar.gz: {e}") from e
    if len(raw) > EG_MAX_WASM_SIZE:
        raise VerifyError(f"decompressed layer is {len(raw)} bytes, over Envoy Gateway's maxWasmSize")
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for member in tar:
                if go_base(member.name) == WASM_NAME:
                    f = tar.extractfile(member)
                    data = f.read() if f else b""
                    if len(data) != member.size:
                        raise VerifyError(f"failed to read {WASM_NAME}: short read")
                    return data
    except tarfile.TarError as e:
        raise VerifyError(f"layer is not a tar: {e}") from e
    raise VerifyError(f"{WASM_NAME} not found in the archive")


def fetch_wasm(manifest: dict, read_blob) -> tuple[str, bytes]:
    """The binaryFetcher of PrepareFetch in Istio pkg/wasm/imagefetcher.go and Envoy
    Gateway internal/wasm/imagefetcher.go (Envoy Gateway's is a port of Istio's).

    - manifest mediaType is Docker schema 2: extractDockerImage. The LAST layer must be
      application/vnd.docker.image.rootfs.diff.tar.gzip; extractWasmPluginBinary on it.
    - otherwise extractOCIStandardImage ("compat" variant): the LAST layer must be
      application/vnd.oci.image.layer.v1.tar+gzip; extractWasmPluginBinary on it.
      (Older Istio releases required exactly one layer; ours has one.)
    - failing that, extractOCIArtifactImage ("oci" variant): exactly two layers, the first
      of type application/vnd.module.wasm.content.layer.v1+wasm is the raw module.
    Then cache.go's isValidWasmBinary: at least 8 bytes starting with \\0asm.
    Returns (variant, module bytes).
    """
    layers = manifest.get("layers") or []

    def last_layer_plugin(expected: str) -> bytes:
        if not layers:
            raise VerifyError("number of layers must be greater than zero")
        mt = layers[-1].get("mediaType")
        if mt != expected:
            raise VerifyError(f"invalid media type {mt} (expect {expected})")
        return extract_wasm_plugin_binary(read_blob(layers[-1]))

    if manifest.get("mediaType") == MT_DOCKER_MANIFEST:
        variant, wasm = "docker (compat)", last_layer_plugin(MT_DOCKER_LAYER)
    else:
        try:
            variant, wasm = "oci standard (compat)", last_layer_plugin(MT_LAYER)
        except VerifyError as err_compat:
            try:
                if len(layers) != 2:
                    raise VerifyError(f"number of layers must be 2 but got {len(layers)}")
                found = [layer for layer in layers if layer.get("mediaType") == MT_WASM_ARTIFACT_LAYER]
                if not found:
                    raise VerifyError(f"could not find the layer of type {MT_WASM_ARTIFACT_LAYER}")
                variant, wasm = "oci artifact", read_blob(found[0])
            except VerifyError as err_oci:
                raise VerifyError(
                    "the given image is in invalid format as an OCI image: "
                    f"could not parse as compat variant: {err_compat}; "
                    f"could not parse as oci variant: {err_oci}"
                ) from None
    if not is_valid_wasm_binary(wasm):
        raise VerifyError("fetched Wasm binary is invalid (isValidWasmBinary)")
    return variant, wasm


# ---------------------------------------------------------------- verify


def load_json(data: bytes, what: str):
    try:
        return json.loads(data)
    except ValueError as e:
        raise VerifyError(f"{what} is not JSON: {e}") from e


def check_blobs(files: dict[str, bytes]) -> None:
    """Every blob's sha256 equals its file name."""
    for rel, data in sorted(files.items()):
        if not rel.startswith("blobs/"):
            continue
        parts = rel.split("/")
        if len(parts) != 3 or parts[1] != "sha256":
            raise VerifyError(f"{rel}: unexpected blob path (want blobs/sha256/<hex>)")
        actual = sha256_hex(data)
        if actual != parts[2]:
            raise VerifyError(f"{rel}: content has sha256 {actual}, not its name: the blob is corrupt")


def verify_files(files: dict[str, bytes], wasm: bytes, where: str) -> list[str]:
    """Check a layout given as {relative path: bytes}; returns lines to report."""

    def resolve(desc: dict, what: str) -> bytes:
        digest = desc.get("digest", "")
        if not isinstance(digest, str) or not digest.startswith("sha256:"):
            raise VerifyError(f"{what}: digest {digest!r} is not sha256:<hex>")
        rel = "blobs/sha256/" + digest[len("sha256:") :]
        if rel not in files:
            raise VerifyError(f"{what}: {digest} has no blob {rel}")
        data = files[rel]
        if sha256_hex(data) != digest[len("sha256:") :]:
            raise VerifyError(f"{what}: blob {rel} does not hash to {digest}")
        if desc.get("size") != len(data):
            raise VerifyError(f"{what}: descriptor size {desc.get('size')} != blob size {len(data)}")
        return data

    for required in ("oci-layout", "index.json"):
        if required not in files:
            raise VerifyError(f"{where}: no {required}")
    if load_json(files["oci-layout"], "oci-layout") != {"imageLayoutVersion": "1.0.0"}:
        raise VerifyError("oci-layout is not {\"imageLayoutVersion\":\"1.0.0\"}")
    check_blobs(files)

    index = load_json(files["index.json"], "index.json")
    if index.get("schemaVersion") != 2:
        raise VerifyError("index.json: schemaVersion is not 2")
    manifests = index.get("manifests") or []
    if len(manifests) != 1:
        raise VerifyError(f"index.json: expected one manifest, found {len(manifests)}")
    mdesc = manifests[0]
    if mdesc.get("mediaType") != MT_MANIFEST:
        raise VerifyError(f"index.json: manifest mediaType {mdesc.get('mediaType')!r}, want {MT_MANIFEST}")
    ref = (mdesc.get("annotations") or {}).get("org.opencontainers.image.ref.name")
    if not ref:
        raise VerifyError("index.json: no org.opencontainers.image.ref.name annotation")
    manifest = load_json(resolve(mdesc, "index.json manifests[0]"), "manifest")
    if manifest.get("schemaVersion") != 2 or manifest.get("mediaType") != MT_MANIFEST:
        raise VerifyError("manifest: schemaVersion 2 and an OCI manifest mediaType expected")

    cdesc = manifest.get("config") or {}
    if cdesc.get("mediaType") != MT_CONFIG:
        raise VerifyError(f"manifest: config mediaType {cdesc.get('mediaType')!r}, want {MT_CONFIG}")
    config = load_json(resolve(cdesc, "manifest config"), "config")
    if (config.get("os"), config.get("architecture")) != ("linux", "amd64"):
        raise VerifyError(
            f"config: os/architecture {config.get('os')}/{config.get('architecture')}, want linux/amd64 "
            "(docker load rejects other OSes)"
        )
    rootfs = config.get("rootfs") or {}
    layers = manifest.get("layers") or []
    diff_ids = rootfs.get("diff_ids") or []
    if rootfs.get("type") != "layers" or len(diff_ids) != len(layers):
        raise VerifyError(f"config: rootfs must be type layers with one diff_id per layer ({len(layers)})")

    def read_blob(desc: dict) -> bytes:
        return resolve(desc, f"layer {desc.get('digest')}")

    for i, (ldesc, diff_id) in enumerate(zip(layers, diff_ids)):
        blob = read_blob(ldesc)
        if ldesc.get("mediaType") != MT_LAYER or blob[:2] != b"\x1f\x8b":
            raise VerifyError(f"layer {i}: want a gzip {MT_LAYER}")
        try:
            uncompressed = gzip.decompress(blob)
        except (OSError, EOFError) as e:
            raise VerifyError(f"layer {i}: does not gunzip: {e}") from e
        if "sha256:" + sha256_hex(uncompressed) != diff_id:
            raise VerifyError(f"layer {i}: diff_id {diff_id} is not the sha256 of the uncompressed tar")

    variant, fetched = fetch_wasm(manifest, read_blob)
    if fetched != wasm:
        raise VerifyError(
            f"{WASM_NAME} as the fetchers extract it ({len(fetched)} bytes, sha256 {sha256_hex(fetched)}) "
            f"differs from the given wasm ({len(wasm)} bytes, sha256 {sha256_hex(wasm)})"
        )
    return [
        f"{where}: OK: {len(files)} files, every blob hashes to its name; index -> manifest "
        f"{mdesc['digest']} (ref.name {ref}) -> config linux/amd64, {len(layers)} gzip layer(s), diff_ids match",
        f"{where}: OK: fetcher rules ({variant}) extract {WASM_NAME} == the given wasm "
        f"({len(wasm)} bytes, sha256 {sha256_hex(wasm)})",
    ]


def read_layout_dir(layout: Path) -> dict[str, bytes]:
    if not layout.is_dir():
        raise VerifyError(f"{layout}: not a directory")
    return {p.relative_to(layout).as_posix(): p.read_bytes() for p in sorted(layout.rglob("*")) if p.is_file()}


def verify_docker_tar(tar_path: Path, layout_files: dict[str, bytes], wasm: bytes) -> list[str]:
    """The tar holds the same layout plus a docker-archive manifest.json that resolves."""
    files: dict[str, bytes] = {}
    with tarfile.open(tar_path, mode="r:") as tar:
        for m in tar:
            if m.isfile():
                f = tar.extractfile(m)
                files[m.name] = f.read() if f else b""
            elif not m.isdir():
                raise VerifyError(f"{tar_path}: unexpected entry {m.name} (type {m.type!r})")
    docker_manifest = load_json(files.pop("manifest.json", b"null"), f"{tar_path}: manifest.json")
    if files != layout_files:
        raise VerifyError(f"{tar_path}: its OCI layout files differ from the layout directory's")
    if not (isinstance(docker_manifest, list) and len(docker_manifest) == 1):
        raise VerifyError(f"{tar_path}: manifest.json must be a list of one image")
    entry = docker_manifest[0]
    oci_manifest = json.loads(files["blobs/sha256/" + json.loads(files["index.json"])["manifests"][0]["digest"][7:]])
    want_config = "blobs/sha256/" + oci_manifest["config"]["digest"][7:]
    want_layers = ["blobs/sha256/" + layer["digest"][7:] for layer in oci_manifest["layers"]]
    if entry.get("Config") != want_config or entry.get("Layers") != want_layers:
        raise VerifyError(f"{tar_path}: manifest.json Config/Layers do not match the OCI manifest")
    if not entry.get("RepoTags"):
        raise VerifyError(f"{tar_path}: manifest.json has no RepoTags")
    lines = verify_files(files, wasm, str(tar_path))
    return lines + [f"{tar_path}: OK: docker manifest.json -> RepoTags {entry['RepoTags']}, same config and layer"]


def cmd_verify(args) -> int:
    wasm = Path(args.wasm).read_bytes()
    try:
        files = read_layout_dir(Path(args.layout))
        lines = verify_files(files, wasm, args.layout)
        if args.tar:
            lines += verify_docker_tar(Path(args.tar), files, wasm)
    except VerifyError as e:
        print(f"verify FAILED: {e}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write DIR/layout and DIR/" + TAR_NAME)
    b.add_argument("--wasm", required=True, help="the module to package")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--tag", default=DEFAULT_TAG, help=f"NAME:VERSION (default {DEFAULT_TAG})")
    b.set_defaults(func=cmd_build)
    v = sub.add_parser("verify", help="check a layout as the Istio / Envoy Gateway fetchers read it")
    v.add_argument("--layout", required=True, help="the OCI layout directory (DIR/layout)")
    v.add_argument("--wasm", required=True, help="the module the image must hold")
    v.add_argument("--tar", help="also check this docker-load tar against the layout")
    v.set_defaults(func=cmd_verify)
    args = parser.parse_args(argv)
    os.umask(0o022)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
