"""lamina inside your own pyinfra deploy, beside stock operations (an example that the test
suite runs: tests/integration/test_pyinfra_api.py).

    pyinfra inventories/lab.py roles/example/deploy.py                 # every host
    pyinfra inventories/lab.py roles/example/deploy.py --limit lab1    # one host
    pyinfra inventories/lab.py roles/example/deploy.py --dry           # what would change
    LAMINA_LAB_USER=lamina pyinfra inventories/lab.py roles/example/deploy.py --sudo

lamina's operation takes pyinfra's global arguments like any other (`_sudo`, `_if`, ...), and
its result tells later operations whether it changed the host (`did_change`).
"""

from pathlib import Path

from pyinfra.operations import files, server

from lamina.pyinfra import apply_spec

HERE = Path(__file__).resolve().parent

# stock pyinfra: the content that the spec's bind mount serves
files.directory(name="site directory", path="/srv/example/site", mode="755")
files.put(name="index page", src=str(HERE / "files" / "index.html"), dest="/srv/example/site/index.html",
          mode="644")

# lamina: the volume, the bind mount and the overlay of roles/example/spec.yml
storage = apply_spec(str(HERE / "spec.yml"), name="lamina: example storage")

# stock again, only on hosts where lamina changed something
server.shell(name="record the storage change", commands=["date -u +%s%N > /srv/example/storage-changed"],
             _if=storage.did_change)
