"""pyinfra built-ins baseline: the benchmark's state with stock operations only.

    pyinfra -y INVENTORY bench/baselines/pyinfra_deploy.py

Host data (bench.baselines.prepare writes the inventory): bl_n containers, bl_root (ROOT), bl_bind
(the bind sources' dir), bl_tar (the busybox rootfs tar on the controller).

server.mount quirks worked around here (pyinfra 3.10):
- when the path is not in the Mounts fact it looks the *device* up instead, so every overlay gets a
  unique device name (overlay ignores it); with the usual "overlay" one, any other overlay on the
  host (another container, another tool) would count as this one being mounted;
- existing mounts are compared by options as a subset of /proc/self/mountinfo's, where "bind" never
  appears: options=["bind"] would remount every bind mount on every run. So the bind goes into the
  device, which server.mount passes to mount(8) unquoted: device="--bind SRC".
"""

from pyinfra import host
from pyinfra.facts.files import File
from pyinfra.operations import files, server

n, root, bind = host.data.bl_n, host.data.bl_root, host.data.bl_bind
layer = f"{root}/layer"

# The layer: shipped and extracted only if missing (a fact read while the deploy is prepared).
if not host.get_fact(File, path=f"{layer}/bin/busybox"):
    files.put(name="Ship the layer", src=host.data.bl_tar, dest=f"{root}/rootfs.tar")
    files.directory(name="Layer dir", path=layer)
    server.shell(name="Extract the layer", commands=[f"tar -xf {root}/rootfs.tar -C {layer}"])

for i in range(n):
    c = f"{root}/c{i}"
    for path in (f"{c}/upper", f"{c}/work", f"{c}/merged", f"{root}/vol/v{i}/_data", f"{bind}/b{i}"):
        files.directory(name=f"Dir {path}", path=path)
    server.mount(
        name=f"Overlay {c}/merged",
        path=f"{c}/merged",
        fs_type="overlay",
        device=f"bl-c{i}",
        options=[f"lowerdir={layer}", f"upperdir={c}/upper", f"workdir={c}/work"],
    )
    for src, dest in ((f"{root}/vol/v{i}/_data", f"{c}/merged/data"), (f"{bind}/b{i}", f"{c}/merged/share")):
        files.directory(name=f"Mountpoint {dest}", path=dest)
        server.mount(name=f"Bind {dest}", path=dest, device=f"--bind {src}")
