"""Crash safety: kill -9 the apply at random points (shipping layers, running steps,
mounting), re-run, and check that the host converged with nothing half-done and no
byte of a container's writable layer or a volume lost.

LAMINA_CRASH_TRIALS (default 30) and LAMINA_CRASH_SEED (default: random, printed) make a
failing run reproducible."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

from test_engine import CLEAN, REPO, as_test_user, changed_objects, changes

from lamina.materialize import command

TRIALS = int(os.environ.get("LAMINA_CRASH_TRIALS", "30"))
C = "/var/lib/lamina/containers"
SUMS = ("for d in /var/lib/lamina/containers/*/upper /var/lib/lamina/volumes/*/_data; do "
        "printf '%s ' \"$d\"; tar -C \"$d\" --sort=name --numeric-owner -cf - . | sha256sum; done")


def spec_for(tmp_path, trial: int):
    files = tmp_path / "files"
    (files / "blob").mkdir(parents=True, exist_ok=True)
    (files / "blob" / "data").write_bytes(random.randbytes(6 << 20))  # a new layer to ship every trial
    spec = tmp_path / "crash.yml"
    spec.write_text(textwrap.dedent(f"""\
        images:
          base: {{steps: [{{add: {{src: rootfs.tar}}}}]}}
          app:
            from: base
            steps:
              - copy: {{src: blob, dest: /blob}}
              - run: sleep 0.3 && echo trial {trial} > /trial
        containers:
          one: {{image: app, mounts: [keep:/data, /srv/share:/share]}}
          two: {{image: app, mounts: [keep2:/data]}}
        """))
    return spec


def test_killed_applies_always_converge_and_lose_nothing(lab, demo_rootfs, tmp_path):
    seed = int(os.environ.get("LAMINA_CRASH_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"crash trials: {TRIALS}, seed {seed} (LAMINA_CRASH_SEED={seed} repeats them)")
    rng = random.Random(seed)
    random.seed(seed)
    h = lab.hosts[1]
    assert lab.run(h, CLEAN).returncode == 0
    (tmp_path / "files").mkdir()
    shutil.copy(demo_rootfs, tmp_path / "files" / "rootfs.tar")  # copy sources stay inside files/
    changes(lab, "--limit", h, spec=spec_for(tmp_path, 0))
    kills = []
    for trial in range(1, TRIALS + 1):
        # data written in the containers and volumes before the trial must survive it
        lab.run(h, f"echo {trial} >> {C}/one/merged/root/log && echo {trial} >> {C}/one/merged/data/log && "
                   f"echo {trial} >> {C}/two/merged/data/log")
        before = lab.run(h, SUMS).stdout
        spec = spec_for(tmp_path, trial)
        args, env = as_test_user(("apply", "-i", str(lab.inventory), str(spec), "--limit", h), None)
        proc = subprocess.Popen([sys.executable, "-m", "lamina.cli", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **env})
        delay = rng.uniform(0.2, 2.2)  # an apply of this spec takes about 2 s here
        time.sleep(delay)
        finished = proc.poll() is not None
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # it had finished, with its whole group
            pass
        proc.wait()
        kills.append(f"{delay:.2f}s{'' if not finished else ' (had finished)'}")
        report = changes(lab, "--limit", h, spec=spec)[h]  # the re-run
        where = f"trial {trial} (seed {seed}, killed after {delay:.2f}s)"
        assert not report["failed"], (where, report)
        assert changed_objects(changes(lab, "--limit", h, spec=spec)) == {h: []}, where
        assert lab.run(h, "ls -A /var/lib/lamina/staging").stdout == "", where  # no debris
        layers = lab.run(h, "ls /var/lib/lamina/layers").stdout.split()
        assert lab.run(h, command("checkseal", "/var/lib/lamina", *layers)).stdout == "", where  # no half layers
        targets = Counter(line.split()[4] for line in lab.run(h, "cat /proc/self/mountinfo").stdout.splitlines())
        ours = {t: n for t, n in targets.items() if t.startswith(("/var/lib/lamina/", "/srv/", "/mnt/"))}
        assert not [t for t, n in ours.items() if n > 1 or "/staging/" in t], (where, ours)  # no leaked mounts
        assert lab.run(h, SUMS).stdout == before, where  # not a byte lost
        assert lab.run(h, f"cat {C}/one/merged/trial").stdout == f"trial {trial}\n", where
    print("killed after:", ", ".join(kills))
