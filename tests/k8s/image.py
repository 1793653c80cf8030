#!/usr/bin/env python3
"""Container images for the real test node, written without a Docker engine.

Writes a docker-archive (what `docker save` writes, and what
`ctr -n k8s.io images import` reads) of one layer holding a release binary,
the shared libraries `ldd` says it needs (from this Debian 12 machine, the
same release as the Dockerfiles' distroless/cc-debian12 runtime), CA
certificates, and the distroless `nonroot` user (65532) with its home.

The image's config (entrypoint, user, env, labels, exposed ports, where the
binary goes) is read from the final stage of the Dockerfile users build
with, so the two cannot drift; an instruction there that this script does
not know is an error, not something it silently leaves out.

    image.py build DOCKERFILE BINARY TAG OUT.tar
    image.py pause PAUSE_BINARY TAG OUT.tar     (the pod sandbox image)
    image.py busybox BUSYBOX TAG OUT.tar        (the local-path provisioner's helper)
    image.py inspect OUT.tar                    (the config, as JSON)

Everything in the archive is deterministic (no timestamps, sorted entries),
so the same inputs give the same image id.
"""

import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile

NONROOT = 65532
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def die(msg):
    sys.exit(f"image.py: {msg}")


def final_stage(dockerfile):
    """The instructions of the last FROM stage, as (KEYWORD, argument) with
    line continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in open(dockerfile, encoding="utf-8"):
        line = raw.rstrip("\n")
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    stage = []
    for line in lines:
        keyword, _, arg = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage = []
        elif keyword != "ARG":
            stage.append((keyword, arg.strip()))
    return stage


def key_values(arg):
    """`k="v" k2=v2` (LABEL, ENV) as pairs, quotes removed."""
    pairs = []
    for token in shlex.split(arg):
        key, sep, value = token.partition("=")
        if not sep:
            die(f"`{token}`: only the KEY=VALUE form is supported")
        pairs.append((key, value))
    return pairs


def config_from_dockerfile(dockerfile):
    """The image config the Dockerfile's final stage declares, and where the
    binary is copied to."""
    config = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
              "Labels": {}, "ExposedPorts": {}}
    binary_dest = None
    for keyword, arg in final_stage(dockerfile):
        if keyword == "LABEL":
            config["Labels"].update(key_values(arg))
        elif keyword == "ENV":
            config["Env"] += [f"{k}={v}" for k, v in key_values(arg)]
        elif keyword == "USER":
            config["User"] = arg
        elif keyword == "EXPOSE":
            for port in arg.split():
                config["ExposedPorts"][port if "/" in port else f"{port}/tcp"] = {}
        elif keyword == "ENTRYPOINT":
            config["Entrypoint"] = json.loads(arg)
        elif keyword == "COPY":
            m = re.fullmatch(r"--from=\S+\s+(\S+)\s+(\S+)", arg)
            if not m or binary_dest:
                die(f"COPY {arg}: only one `COPY --from=STAGE SRC DEST` of the binary is supported")
            binary_dest = m.group(2)
        else:
            die(f"{keyword} in the final stage of {dockerfile} is not supported here; teach image.py")
    for required in ("User", "Entrypoint"):
        if required not in config:
            die(f"{dockerfile} declares no {required.upper()}")
    if not binary_dest:
        die(f"{dockerfile} copies no binary")
    return config, binary_dest


def shared_libraries(binary):
    """The libraries the dynamic loader maps for `binary`, and the loader."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    paths = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            paths.append(m.group(1))
    return paths


class Layer:
    """A deterministic tar of a root filesystem."""

    def __init__(self):
        self.entries = {}

    def dir(self, path, mode=0o755, uid=0):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in self.entries:
                self.entries[p] = ("dir", None, 0o755, 0)
        self.entries[path.strip("/")] = ("dir", None, mode, uid)

    def file(self, path, data, mode=0o644, uid=0):
        parent = os.path.dirname(path.strip("/"))
        if parent:
            self.dir("/" + parent, self.entries.get(parent, (0, 0, 0o755))[2])
        self.entries[path.strip("/")] = ("file", data, mode, uid)

    def symlink(self, path, target):
        self.dir("/" + os.path.dirname(path.strip("/")))
        self.entries[path.strip("/")] = ("link", target, 0o777, 0)

    def host_file(self, path, dest=None):
        """A file of this machine at the same path (symlinks kept, targets added)."""
        dest = dest or path
        if os.path.islink(path):
            target = os.readlink(path)
            self.symlink(dest, target)
            self.host_file(os.path.normpath(os.path.join(os.path.dirname(path), target)))
            return
        with open(path, "rb") as f:
            self.file(dest, f.read(), os.stat(path).st_mode & 0o7777)

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
            for path in sorted(self.entries):
                kind, data, mode, uid = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mode, info.uid, info.gid, info.mtime = mode, uid, uid, 0
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    t.addfile(info)
                elif kind == "link":
                    info.type, info.linkname = tarfile.SYMTYPE, data
                    t.addfile(info)
                else:
                    info.size = len(data)
                    t.addfile(info, io.BytesIO(data))
        return buf.getvalue()


def nonroot_base(layer):
    """What distroless's nonroot variant has besides glibc: the users, their
    homes, /tmp, CA certificates."""
    layer.file("/etc/passwd", (
        "root:x:0:0:root:/root:/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
        f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n").encode())
    layer.file("/etc/group", f"root:x:0:\nnobody:x:65534:\nnonroot:x:{NONROOT}:\n".encode())
    layer.dir("/root", 0o700)
    layer.dir("/home/nonroot", 0o700, NONROOT)
    layer.dir("/tmp", 0o1777)
    layer.host_file(CA_BUNDLE)


def write_archive(out, tag, layer_tar, config):
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "tests/k8s/image.py"}],
    }
    config_bytes = json.dumps(image_config, sort_keys=True, separators=(",", ":")).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = diff_id.split(":")[1] + "/layer.tar"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": [layer_name]}]).encode()
    members = [(config_name, config_bytes), (layer_name, layer_tar), ("manifest.json", manifest)]
    with tarfile.open(out + ".tmp", mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in members:
            if "/" in name:
                d = tarfile.TarInfo(name.split("/")[0])
                d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 0
                t.addfile(d)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            t.addfile(info, io.BytesIO(data))
    os.replace(out + ".tmp", out)
    print(f"{tag}: {out} (image {hashlib.sha256(config_bytes).hexdigest()[:12]}, layer {len(layer_tar) // 1024} KiB)")


def build(dockerfile, binary, tag, out):
    config, dest = config_from_dockerfile(dockerfile)
    layer = Layer()
    nonroot_base(layer)
    for lib in shared_libraries(binary):
        layer.host_file(lib)
    with open(binary, "rb") as f:
        layer.file(dest, f.read(), 0o755)
    write_archive(out, tag, layer.tar(), config)


def pause(binary, tag, out):
    """The pod sandbox image: the static `pause` of the Kubernetes module."""
    layer = Layer()
    with open(binary, "rb") as f:
        layer.file("/pause", f.read(), 0o755)
    write_archive(out, tag, layer.tar(), {"Entrypoint": ["/pause"], "User": "65535:65535"})


def busybox(binary, tag, out):
    """The local-path provisioner's helper image: a static busybox and the
    applets its setup and teardown scripts use."""
    layer = Layer()
    with open(binary, "rb") as f:
        layer.file("/bin/busybox", f.read(), 0o755)
    for applet in ("sh", "mkdir", "rm", "ls", "chmod"):
        layer.symlink(f"/bin/{applet}", "busybox")
    layer.dir("/tmp", 0o1777)
    write_archive(out, tag, layer.tar(), {"Entrypoint": ["/bin/sh"], "Env": ["PATH=/bin"]})


def inspect(archive):
    with tarfile.open(archive) as t:
        [manifest] = json.load(t.extractfile("manifest.json"))
        config = json.load(t.extractfile(manifest["Config"]))
    json.dump({"RepoTags": manifest["RepoTags"], "config": config["config"]}, sys.stdout, indent=2)
    print()


def main(argv):
    commands = {"build": (build, 4), "pause": (pause, 3), "busybox": (busybox, 3), "inspect": (inspect, 1)}
    if len(argv) < 2 or argv[1] not in commands or len(argv) - 2 != commands[argv[1]][1]:
        die(__doc__)
    fn, _ = commands[argv[1]]
    fn(*argv[2:])


if __name__ == "__main__":
    main(sys.argv)
