#!/usr/bin/env bash
# labhosts.sh up|down|reboot HOST — lamina's test hosts on one machine (root; iproute2, util-linux,
# openssh). Driven by `lamina lab` (lamina/lab.py); runnable alone for debugging: `bash labhosts.sh up`.
#
# Each host NAME (= $PREFIX$i, also its network namespace):
#   - own netns, eth0 = $NET.(10+i)/24 on bridge ${PREFIX}br (the machine is $NET.1)
#   - own mount/UTS/IPC/PID namespaces (mounts made on a host stay on that host)
#   - copy-on-write root: overlay, lower=$LOWER (default /), upper+work on its "disk"
#   - /srv /mnt /var/lib/lamina /root (a clean home) on its disk too; tmpfs /run /tmp /dev/shm
#   - disks: tmpfs (private to the host, gone when it stops) or persistent: directories on the
#     machine's disk ($DISKS_DIR/<lab>/NAME/{up,work,srv,mnt,lamina,home}) bind-mounted into the
#     host, so that everything written to its root (/etc included) and to those dirs survives
#     `reboot NAME`, exactly like a real disk; /run, /tmp and all mounts made inside do not
#   - /sys and /proc/sys read-only (except /proc/sys/net)
#   - own sshd with a fresh ed25519 host key (kept across reboots; with persistent disks it runs
#     the host's own /etc/rc.local first at every boot), or systemd as PID 1 booting
#     multi-user.target, which starts sshd (lab-sshd.service, a runtime unit in /run); sshd logs
#     (LogLevel VERBOSE) to $LAB/hosts/NAME/sshd.log on the machine, one "Starting session: ..."
#     line per exec/subsystem/shell request (lamina.lab.exec_requests); reboots append to it.
#
# Environment (two labs coexist when prefix, net and dir differ):
#   LAMINA_LAB_DIR    state dir, default /run/lamina/lab (mode 0700)
#   LAMINA_LAB_PREFIX host-name prefix, default lab (lab1..labN); names the bridge and veths
#   LAMINA_LAB_NET    first three octets of the /24, default 10.203.0
#   LAMINA_LAB_N      number of hosts for `up`, default 3
#   LAMINA_LAB_LOWER  lower dir of each host's root, default / (e.g. a debootstrap'ed tree)
#   LAMINA_LAB_LOWERS one lower dir per host, space-separated (a mixed fleet: / / /trixie-root);
#                     overrides LAMINA_LAB_LOWER
#   LAMINA_LAB_INIT   sshd (default) or systemd
#   LAMINA_LAB_DISKS  tmpfs or persistent; default: persistent with systemd, else tmpfs
#   LAMINA_LAB_DISKS_DIR  where persistent disks live, default /var/lib/lamina-lab (a real disk:
#                     not an overlay, which cannot hold upper dirs)
#   LAMINA_LAB_BOOT_TIMEOUT  seconds systemd may take to boot a host, default 60
# `reboot` and `down` use the settings the lab was started with (recorded in $LAB/.lamina-lab).
#
# Files in $LAB: id_ed25519 (client key), sudo_password (user lampw's), known_hosts ("NAME,IP key"), ssh_config
# (StrictHostKeyChecking yes), hosts.json (what `up` started), hosts/NAME/{sshd.log,sshd_config,
# ssh_host_ed25519_key*}.
set -euo pipefail
umask 022
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SELF=$(readlink -f "${BASH_SOURCE[0]}")
LAB=${LAMINA_LAB_DIR:-/run/lamina/lab}; P=${LAMINA_LAB_PREFIX:-lab}; NET=${LAMINA_LAB_NET:-10.203.0}
N=${LAMINA_LAB_N:-3}; LOWER=${LAMINA_LAB_LOWER:-/}; LOWERS=${LAMINA_LAB_LOWERS:-}; INIT=${LAMINA_LAB_INIT:-sshd}
DISKS=${LAMINA_LAB_DISKS:-}; DISKS_DIR=${LAMINA_LAB_DISKS_DIR:-/var/lib/lamina-lab}
BOOT_TIMEOUT=${LAMINA_LAB_BOOT_TIMEOUT:-60}
BR=${P}br; MARK=.lamina-lab   # $LAB/$MARK: the lab's prefix, then its settings; proof of a lab dir
DISKMARK=.lamina-lab-disks    # in a lab's disks dir: the lab dir it belongs to
DD=                           # this lab's disks dir (persistent disks only)

die() { echo "lab: $*" >&2; exit 1; }

check_env() {
  # Names end up in ssh_config, JSON and interface names unquoted: allow only safe characters.
  [[ $LAB =~ ^/[A-Za-z0-9._/-]+$ && $LAB != *..* && ${#LAB} -le 64 ]] ||
    die "LAMINA_LAB_DIR must be an absolute path of [A-Za-z0-9._/-], at most 64 chars (ssh control sockets): $LAB"
  # A prefix ending in a digit would make one lab's host names match another's pattern (lab1 + 1).
  [[ $P =~ ^[a-z]([a-z0-9-]{0,8}[a-z-])?$ ]] ||
    die "LAMINA_LAB_PREFIX must be 1-10 chars of [a-z0-9-], start with a letter, not end in a digit: $P"
  if ! [[ $NET =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] ||
     (( BASH_REMATCH[1] > 255 || BASH_REMATCH[2] > 255 || BASH_REMATCH[3] > 255 )); then
    die "LAMINA_LAB_NET must look like 10.203.0: $NET"
  fi
  if ! [[ $N =~ ^[0-9]+$ ]] || (( N < 1 || N > 99 )); then die "number of hosts must be 1..99: $N"; fi
  [[ $INIT == sshd || $INIT == systemd ]] || die "LAMINA_LAB_INIT must be sshd or systemd: $INIT"
  [ -n "$LOWERS" ] || LOWERS=$(for _ in $(seq "$N"); do printf '%s ' "$LOWER"; done)
  LOWERS=$(echo $LOWERS)  # one space between, none around
  [ "$(wc -w <<< "$LOWERS")" = "$N" ] || die "LAMINA_LAB_LOWERS must name one lower dir per host ($N): $LOWERS"
  for LOWER in $LOWERS; do
    [[ $LOWER =~ ^/[A-Za-z0-9._/-]*$ && -d $LOWER ]] || die "a lower dir must be a directory, path of [A-Za-z0-9._/-]: $LOWER"
    if [ "$INIT" = systemd ]; then
      [ -x "$LOWER/lib/systemd/systemd" ] || die "no $LOWER/lib/systemd/systemd: install systemd for --init systemd"
    fi
  done
  [ -n "$DISKS" ] || { if [ "$INIT" = systemd ]; then DISKS=persistent; else DISKS=tmpfs; fi; }
  [[ $DISKS == tmpfs || $DISKS == persistent ]] || die "LAMINA_LAB_DISKS must be tmpfs or persistent: $DISKS"
  [[ $DISKS_DIR =~ ^/[A-Za-z0-9._/-]*[A-Za-z0-9._-]$ && $DISKS_DIR != *..* ]] ||
    die "LAMINA_LAB_DISKS_DIR must be an absolute path of [A-Za-z0-9._/-]: $DISKS_DIR"
  [[ $BOOT_TIMEOUT =~ ^[1-9][0-9]{0,3}$ ]] || die "LAMINA_LAB_BOOT_TIMEOUT must be seconds (1-9999): $BOOT_TIMEOUT"
  if [ "$INIT" = systemd ]; then
    cgroot >/dev/null || die "--init systemd needs a cgroup2 hierarchy (/sys/fs/cgroup or /sys/fs/cgroup/unified)"
  fi
}

# a lab setting recorded by `up` in $LAB/$MARK (KEY=VALUE lines after the prefix)
conf() { awk -v k="$1" 'NR > 1 && index($0, k "=") == 1 {print substr($0, length(k) + 2); exit}' \
  "$LAB/$MARK" 2>/dev/null || :; }

# the lab's disks dir: LAB with / turned into _ (LAB has no _: one dir per lab dir, no clashes)
disk_dir() { local k=${LAB#/}; echo "$DISKS_DIR/${k//\//_}"; }

cgroot() { local c; for c in /sys/fs/cgroup/unified /sys/fs/cgroup; do
  [ "$(stat -fc %T "$c" 2>/dev/null)" = cgroup2fs ] && { echo "$c"; return; }; done; return 1; }

rm_cgroup() {  # remove cgroup $1 and its children; rmdir sees EBUSY until killed processes are gone
  local t; for t in $(seq 50); do
    [ -d "$1" ] || return 0
    find "$1" -depth -type d -exec rmdir {} + 2>/dev/null || :
    [ -d "$1" ] && sleep 0.1
  done; [ ! -d "$1" ]; }

install_host() {  # first boot of a host's disk (every boot with tmpfs disks): a fresh install
  local name=$1 R=$2
  echo "$name" > "$R/etc/hostname"
  { echo "127.0.0.1 localhost"; echo "127.0.1.1 $name"; cat "$LAB/hosts.lab"; } > "$R/etc/hosts"
  # clean home: the machine's ~/.bashrc may block (pyenv init) and sshd runs it for every command
  chmod 700 "$R/root"
  cp "$R/usr/share/base-files/dot.bashrc" "$R/root/.bashrc" 2>/dev/null || :
  cp "$R/usr/share/base-files/dot.profile" "$R/root/.profile" 2>/dev/null || :
  # non-root logins (lamina.lab.USERS), with the lab's key like root (one AuthorizedKeysFile):
  # lamina may sudo without a password, lampw with the lab's password, nosudo not at all
  local u
  # (password "*": no password login, but not "!", a locked account sshd refuses without PAM)
  for u in lamina lampw nosudo; do chroot "$R" useradd --create-home --shell /bin/sh --password '*' "$u"; done
  printf 'lampw:%s\n' "$(cat "$LAB/sudo_password")" | chroot "$R" chpasswd
  if [ -d "$R/etc/sudoers.d" ]; then
    printf '%s\n' "lamina ALL=(ALL:ALL) NOPASSWD: ALL" "lampw ALL=(ALL:ALL) ALL" > "$R/etc/sudoers.d/lamina-lab"
    chmod 440 "$R/etc/sudoers.d/lamina-lab"
  fi
  [ "$INIT" = systemd ] || return 0
  # its own machine-id (journal, D-Bus), not the machine's; its presence also means "not the
  # first boot" to systemd (no systemd-firstboot)
  tr -d '-' < /proc/sys/kernel/random/uuid > "$R/etc/machine-id"
  # A fresh install enables none of the machine's units (its docker, postgresql, ssh.service,
  # gettys, apt timers...): delete its enablement symlinks here (whiteouts in the host's upper);
  # vendor units and their static wants stay. The host boots multi-user.target.
  find "$R/etc/systemd/system" -mindepth 2 -maxdepth 2 -type l \
    \( -path '*.wants/*' -o -path '*.requires/*' \) -delete
  ln -sfn /lib/systemd/system/multi-user.target "$R/etc/systemd/system/default.target"
  # the machine's fstab (its /, /boot, swap) is not this host's: systemd would wait for devices
  # that never appear and fail local-fs.target (emergency mode). / and the disks are ours.
  echo "# lamina lab host $name: / and its disks are mounted by the lab (labhosts.sh)" > "$R/etc/fstab"
}

hostinit() {  # PID 1 of the host's pid ns, already inside its netns + private mount ns
  local name=$1 S=$LAB/hosts/$1 R=$LAB/hosts/$1/root D=${LAMINA_LAB_HOSTDISK:-} d fresh=1 u rclocal=0
  hostname "$name"
  if [ -n "$D" ]; then
    # persistent disk: upper/work (and below, /srv /mnt /var/lib/lamina /root) are directories on
    # the machine's disk; they outlive this host's namespaces: `reboot` mounts them again
    [ ! -e "$D/installed" ] || fresh=0
    mount -t overlay -o "lowerdir=$LOWER,upperdir=$D/up,workdir=$D/work" "lab-$name-root" "$R"
  else
    # upper/work must not live on an overlay (the machine's root may be one): own tmpfs, mounted
    # in this host's mount namespace only, so the machine never sees it and it vanishes with it.
    mount -t tmpfs -o mode=755 "lab-$name-rw" "$S/rw"; mkdir -p "$S/rw"/{up,work}
    mount -t overlay -o "lowerdir=$LOWER,upperdir=$S/rw/up,workdir=$S/rw/work" "lab-$name-root" "$R"
  fi
  mount -t proc proc "$R/proc"
  # read-only /proc/sys: else systemd (or a test) in a host writes the machine's global sysctls
  mount --bind "$R/proc/sys" "$R/proc/sys"; mount -o remount,bind,ro "$R/proc/sys"
  mount --bind "$R/proc/sys/net" "$R/proc/sys/net"; mount -o remount,bind,rw "$R/proc/sys/net"
  mount -t sysfs -o ro sysfs "$R/sys"
  # a private /dev, as container managers make: with the machine's, logind takes its virtual
  # terminals (/dev/tty0), journald writes to its kernel log (/dev/kmsg), getty runs on tty1;
  # and the host's users get a /dev/null they can write to, whatever the machine's has become
  mount -t tmpfs -o mode=755,size=1m,nosuid lab-dev "$R/dev"
  mknod -m 666 "$R/dev/null" c 1 3; mknod -m 666 "$R/dev/zero" c 1 5; mknod -m 666 "$R/dev/full" c 1 7
  mknod -m 666 "$R/dev/random" c 1 8; mknod -m 666 "$R/dev/urandom" c 1 9; mknod -m 666 "$R/dev/tty" c 5 0
  mknod -m 666 "$R/dev/fuse" c 10 229; mkdir "$R/dev/net"; mknod -m 666 "$R/dev/net/tun" c 10 200
  mknod -m 600 "$R/dev/console" c 1 3   # a console that is /dev/null: systemd's boot messages
  mkdir "$R/dev/pts" "$R/dev/shm"; ln -s pts/ptmx "$R/dev/ptmx"   # ptys for ssh sessions
  mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$R/dev/pts"
  ln -s /proc/self/fd "$R/dev/fd"; ln -s fd/0 "$R/dev/stdin"; ln -s fd/1 "$R/dev/stdout"; ln -s fd/2 "$R/dev/stderr"
  mount -t tmpfs -o mode=1777 shm "$R/dev/shm"
  mount -t tmpfs -o mode=1777 tmp "$R/tmp"
  mount -t tmpfs -o mode=755 run "$R/run"
  mkdir -p "$R/var/lib/lamina"
  if [ -n "$D" ]; then
    for d in srv mnt; do mount --bind "$D/$d" "$R/$d"; done
    mount --bind "$D/lamina" "$R/var/lib/lamina"
    mount --bind "$D/home" "$R/root"
    # the machine's lab disks (this host's upper included: ELOOP there) show through the lower
    [ ! -d "$R$DISKS_DIR" ] || mount -t tmpfs -o ro,mode=755,size=4k lab-disks "$R$DISKS_DIR"
  else
    for d in srv mnt; do mount -t tmpfs -o mode=755 "$d" "$R/$d"; done
    mount -t tmpfs -o mode=755 lamina "$R/var/lib/lamina"
    mount -t tmpfs -o mode=700 root "$R/root"
  fi
  [ "$fresh" = 0 ] || install_host "$name" "$R"
  mkdir -m 755 "$R/run/sshd" "$R/run/lab"
  cp "$S/ssh_host_ed25519_key" "$S/sshd_config" "$LAB/authorized_keys" "$R/run/lab/"
  if [ "$INIT" = systemd ]; then
    mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"   # root = our cgroup ns = $(cgroot)/lamina-NAME
    # systemd does not hand its stderr on: bind the machine-side log into the host for sshd
    : > "$R/run/lab/sshd.log"; mount --bind "$S/sshd.log" "$R/run/lab/sshd.log"
    # The lab's own units are runtime units (/run/systemd/system, made again at every boot), so
    # the host's /etc holds only what was installed on it. sshd: wanted by multi-user.target,
    # after basic.target (so after local-fs.target).
    u=$R/run/systemd/system; mkdir -p "$u/multi-user.target.wants"
    printf '%s\n' "[Unit]" "Description=sshd of the lamina lab (how the machine reaches this host)" \
      "[Service]" "ExecStart=/usr/sbin/sshd -D -e -f /run/lab/sshd_config" \
      "StandardError=append:/run/lab/sshd.log" "Restart=on-failure" > "$u/lab-sshd.service"
    ln -s ../lab-sshd.service "$u/multi-user.target.wants/lab-sshd.service"
    ln -s /dev/null "$u/systemd-modules-load.service"   # would load modules into the machine's kernel
    ln -s /dev/null "$u/console-getty.service"          # agetty on a /dev/null console: fails
  fi
  [ -z "$D" ] || [ "$fresh" = 0 ] || : > "$D/installed"
  # without systemd, a persistent host runs its /etc/rc.local at boot (before sshd), as a SysV
  # host would; only one written on the host (in its upper), never the machine's own
  [ -z "$D" ] || [ ! -e "$D/up/etc/rc.local" ] || rclocal=1
  cd "$R"; pivot_root . .; umount -l .; cd /      # detach the machine's root
  [ "$INIT" = systemd ] && exec env -i container=lamina-lab PATH="$PATH" /lib/systemd/systemd
  if [ "$rclocal" = 1 ] && [ -x /etc/rc.local ]; then
    (cd / && exec env -i PATH="$PATH" HOME=/root /etc/rc.local </dev/null) || echo "lab: /etc/rc.local failed: exit $?"
  fi
  exec /usr/sbin/sshd -D -e -f /run/lab/sshd_config
}

my_netns() { ip netns list | awk '{print $1}' | grep -E "^${P}[0-9]+\$" || :; }

# the lab dir that made bridge $BR (its alias), empty if none or no alias
bridge_owner() { { ip -o link show "$BR" 2>/dev/null || :; } | sed -n 's/.* alias \(.*\)$/\1/p'; }

# remove disks dir $1 if it is this lab's (its $DISKMARK names $LAB); 1 if it is not ours
wipe_disks() {
  [ -e "$1" ] || return 0
  [ "$(head -n 1 "$1/$DISKMARK" 2>/dev/null)" = "$LAB" ] || return 1
  rm -rf "$1"
  [ "${1%/*}" != /var/lib/lamina-lab ] || rmdir /var/lib/lamina-lab 2>/dev/null || :
}

down() {
  local ns s pids t owner dd
  # never rm -rf a directory that is not a lab (LAMINA_LAB_DIR=/ would be a bad day); check first
  if [ -e "$LAB" ] && [ ! -e "$LAB/$MARK" ] && [ -n "$(ls -A "$LAB")" ]; then
    die "$LAB is not a lamina lab dir (no $MARK): not touching it"
  fi
  owner=$(bridge_owner)
  # ssh control masters (testinfra starts them) hold connections to the hosts: end them first
  for s in "$LAB"/cm-*; do [ -S "$s" ] && timeout 5 ssh -o ControlPath="$s" -O exit x 2>/dev/null; done || :
  if [ -z "$owner" ] || [ "$owner" = "$LAB" ]; then  # else: prefix $P belongs to another lab
    # Kill everything in each host's netns (a host's PID 1 dying takes its pid namespace with
    # it). Found by netns, not by recorded PIDs: those may have been reused since.
    for ns in $(my_netns); do
      mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null || :)
      [ "${#pids[@]}" = 0 ] || kill -9 "${pids[@]}" 2>/dev/null || :
      for t in $(seq 50); do [ -z "$(ip netns pids "$ns" 2>/dev/null || :)" ] && break; sleep 0.1; done
      ip netns del "$ns" 2>/dev/null || :
    done
    for s in $(ip -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^${P}[0-9]+-h\$" || :)
    do ip link del "$s" 2>/dev/null || :; done
    ip link del "$BR" 2>/dev/null || :
    # systemd hosts: their cgroups; rmdir may see EBUSY until the killed processes are gone
    if s=$(cgroot); then
      for ns in "$s"/lamina-"$P"[0-9]*; do
        if [[ ${ns##*/} =~ ^lamina-${P}[0-9]+$ ]]; then rm_cgroup "$ns" || :; fi
      done
    fi
  fi
  # the persistent disks belong to the lab: where `up` put them, and where they would be now
  # (a machine reboot empties a tmpfs /run, and with it $LAB, but not the disks)
  dd=$(conf diskdir)
  [ -z "$dd" ] || wipe_disks "$dd" || echo "lab: $dd is not $LAB's disks dir (no $DISKMARK naming it): left alone" >&2
  wipe_disks "$(disk_dir)" || :
  rm -rf "$LAB"
}

down_as() { local P=$1 BR=$1br; down; }   # bash: down sees these (dynamic scope)

prepare_disks() {  # this lab's persistent disks, empty (sets DD)
  local i
  DD=$(disk_dir)
  wipe_disks "$DD" || die "$DD is not $LAB's disks dir (no $DISKMARK naming it): not touching it"
  write_conf   # down finds them from now on
  # shellcheck disable=SC2174  # only the last part: it holds host roots, other parents are not ours
  [ -d "$DISKS_DIR" ] || mkdir -p -m 700 "$DISKS_DIR"
  mkdir -m 700 "$DD"; echo "$LAB" > "$DD/$DISKMARK"
  # an overlay's upper must be on a filesystem with xattrs and d_type, not an overlay: try one
  mkdir -p "$DD/.probe"/{l,u,w,m}
  unshare --mount --propagation private mount -t overlay \
    -o "lowerdir=$DD/.probe/l,upperdir=$DD/.probe/u,workdir=$DD/.probe/w" lab-probe "$DD/.probe/m" 2>/dev/null ||
    die "persistent disks need a filesystem that can hold overlay upper dirs, and $DISKS_DIR is on $(stat -fc %T "$DD"): set LAMINA_LAB_DISKS_DIR to a directory on ext4, xfs or btrfs (or use tmpfs disks)"
  rm -rf "$DD/.probe"
  for i in $(seq "$N"); do
    mkdir "$DD/$P$i"; mkdir "$DD/$P$i"/{up,work,srv,mnt,lamina}; mkdir -m 700 "$DD/$P$i/home"
  done
}

lower_of() { cut -d' ' -f"$1" <<< "$LOWERS"; }   # host I's lower dir

HOSTPID=
start_host() {  # I: host $P$I's network, then its PID 1 (sets HOSTPID: unshare, whose child it is)
  local i=$1 name=$P$1 ip=$NET.$(($1 + 10)) S=$LAB/hosts/$P$1 CG='' cgopt='' hd='' mac LOWER
  LOWER=$(lower_of "$1")
  # a fixed MAC (02:00 + the IP), kept across reboots like a real card's: with a new random one
  # the machine's ARP cache points at the old card for seconds after a reboot
  # shellcheck disable=SC2086  # the four octets as four arguments
  mac=$(printf '02:00:%02x:%02x:%02x:%02x' ${ip//./ })
  ip netns add "$name"
  ip link add "$name-h" type veth peer name eth0 address "$mac" netns "$name"
  ip link set "$name-h" master "$BR" up
  ip -n "$name" addr add "$ip/24" dev eth0; ip -n "$name" link set eth0 up; ip -n "$name" link set lo up
  if [ "$INIT" = systemd ]; then CG=$(cgroot)/lamina-$name; mkdir "$CG"; cgopt=--cgroup; fi
  [ "$DISKS" = tmpfs ] || hd=$DD/$name
  # 9>&-: the host must not inherit the lock fd (down would wait on it forever); all output goes
  # to the host's log, so whoever captures our stdout/stderr is not kept waiting by the host.
  # shellcheck disable=SC2016  # $1/$$ belong to the inner sh
  setsid sh -c '[ -z "$1" ] || echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$CG" \
    ip netns exec "$name" env LAMINA_LAB_DIR="$LAB" LAMINA_LAB_INIT="$INIT" LAMINA_LAB_LOWER="$LOWER" \
      LAMINA_LAB_DISKS_DIR="$DISKS_DIR" LAMINA_LAB_HOSTDISK="$hd" \
    unshare $cgopt --mount --uts --ipc --pid --fork --kill-child \
    --propagation private bash "$SELF" __hostinit "$name" </dev/null >>"$S/sshd.log" 2>&1 9>&- &
  HOSTPID=$!
}

# Wait until host NAME (address IP, unshare process HP) is up: its sshd accepts a login (HOW=login)
# or greets (HOW=banner: no session, so exec_requests does not count it), and with systemd, until
# systemd has finished booting. Prints " (systemd: running|degraded)" or, on failure, the reason.
wait_host() {
  local name=$1 ip=$2 hp=$3 how=$4 t pid1 st=
  for t in $(seq 150); do
    if [ "$how" = login ]; then
      ssh -F "$LAB/ssh_config" -o BatchMode=yes "$name" true </dev/null >/dev/null 2>&1 && break
    else
      # shellcheck disable=SC2016
      timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/22" && head -c 4 <&3' _ "$ip" 2>/dev/null |
        grep -q '^SSH-' && break
    fi
    kill -0 "$hp" 2>/dev/null || { echo "it stopped"; return 1; }
    [ "$t" != 150 ] || { echo "its sshd did not answer within 15 s"; return 1; }
    sleep 0.1
  done
  [ "$INIT" = systemd ] || return 0
  pid1=$(cut -d' ' -f1 "/proc/$hp/task/$hp/children" 2>/dev/null || :)
  [ -n "$pid1" ] || { echo "it stopped"; return 1; }
  st=$(timeout -k 2 "$BOOT_TIMEOUT" nsenter -t "$pid1" -a systemctl is-system-running --wait 2>/dev/null) || :
  case $st in running|degraded) echo " (systemd: $st)"; return 0 ;; esac
  [ -n "$st" ] || st=$(timeout 5 nsenter -t "$pid1" -a systemctl is-system-running 2>/dev/null) || :
  echo "systemd did not finish booting within $BOOT_TIMEOUT s (state: ${st:-no answer}; its jobs: lamina lab ssh $name systemctl list-jobs)"
  return 1
}

write_conf() {
  printf '%s\n' "$P" "net=$NET" "init=$INIT" "disks=$DISKS" "diskdir=$DD" "lowers=$LOWERS" > "$LAB/$MARK"
}

up() {
  local i name ip S pid t hostpids=() waiters=() st
  # Another lab (other LAMINA_LAB_DIR) using the same prefix or net would be clobbered or clash.
  t=$(bridge_owner)
  [ -z "$t" ] || [ "$t" = "$LAB" ] ||
    die "prefix $P is used by the lab in $t: take it down (LAMINA_LAB_DIR=$t lamina lab down) or set LAMINA_LAB_PREFIX"
  # this lab dir was last started with another prefix: take those hosts down too
  t=$(head -n 1 "$LAB/$MARK" 2>/dev/null || :)
  if [ -n "$t" ] && [ "$t" != "$P" ]; then down_as "$t"; fi
  t=$(ip -o -4 addr show | awk -v a="$NET.1/24" -v br="$BR" '$4 == a && $2 != br {print $2}')
  [ -z "$t" ] || die "net $NET.0/24 is already on interface $t: set LAMINA_LAB_NET"
  down
  mkdir -p "$LAB/hosts"; chmod 700 "$LAB" "$LAB/hosts"; write_conf   # the marker first: down works
  [ "$DISKS" = tmpfs ] || prepare_disks
  ssh-keygen -q -t ed25519 -N '' -C lamina-lab-client -f "$LAB/id_ed25519"
  (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$LAB/sudo_password")
  cp "$LAB/id_ed25519.pub" "$LAB/authorized_keys"; : > "$LAB/known_hosts"; : > "$LAB/hosts.lab"
  # ControlPath only (no ControlMaster): testinfra turns masters on itself. A master started here
  # would inherit the lock fd and make the next up/down wait forever.
  # KexAlgorithms ^curve25519: 0.13 s instead of 0.22 s per connection (default sntrup761 is slow)
  printf 'Host %s* %s.*\n  User root\n  IdentityFile %s\n  IdentitiesOnly yes\n  UserKnownHostsFile %s\n  StrictHostKeyChecking yes\n  GlobalKnownHostsFile /dev/null\n  ConnectTimeout 5\n  KexAlgorithms ^curve25519-sha256\n  ControlPath %s\n' \
    "$P" "$NET" "$LAB/id_ed25519" "$LAB/known_hosts" "$LAB/cm-%C" > "$LAB/ssh_config"
  ip link add "$BR" type bridge; ip link set "$BR" alias "$LAB"
  ip addr add "$NET.1/24" dev "$BR"; ip link set "$BR" up
  for i in $(seq "$N"); do echo "$NET.$((10+i)) $P$i" >> "$LAB/hosts.lab"
    printf 'Host %s\n  HostName %s\n' "$P$i" "$NET.$((10+i))" >> "$LAB/ssh_config"; done
  for i in $(seq "$N"); do
    name=$P$i; ip=$NET.$((10+i)); S=$LAB/hosts/$name; mkdir -p "$S/rw" "$S/root"; : > "$S/sshd.log"
    ssh-keygen -q -t ed25519 -N '' -C "$name" -f "$S/ssh_host_ed25519_key"
    echo "$name,$ip $(cut -d' ' -f1,2 "$S/ssh_host_ed25519_key.pub")" >> "$LAB/known_hosts"
    # LogLevel VERBOSE: sshd logs "Starting session: command|subsystem 'sftp'|shell ..." once per
    # session request. OpenSSH 9.2 never logs the command text, not even at DEBUG3.
    printf '%s\n' "ListenAddress $ip" "HostKey /run/lab/ssh_host_ed25519_key" "PidFile /run/sshd.pid" \
      "AuthorizedKeysFile /run/lab/authorized_keys" "PermitRootLogin prohibit-password" \
      "PasswordAuthentication no" "KbdInteractiveAuthentication no" "UsePAM no" "UseDNS no" \
      "PrintMotd no" "MaxStartups 100" "MaxSessions 100" "LogLevel VERBOSE" \
      "Subsystem sftp /usr/lib/openssh/sftp-server" > "$S/sshd_config"
    start_host "$i"; hostpids+=("$HOSTPID")
  done
  # wait for every host in parallel: a real login (key, known_hosts, shell) proves the host works
  for i in $(seq "$N"); do
    ( wait_host "$P$i" "$NET.$((10+i))" "${hostpids[i-1]}" login > "$LAB/hosts/$P$i/boot" ) 9>&- &
    waiters+=($!)
  done
  for i in $(seq "$N"); do name=$P$i
    if ! wait "${waiters[i-1]}"; then
      st=$(cat "$LAB/hosts/$name/boot"); die "$name did not start: $st$(log_tail "$name" "$st"); log: $LAB/hosts/$name/sshd.log"
    fi
    echo "  $name $NET.$((10+i)) up$(cat "$LAB/hosts/$name/boot")"; rm -f "$LAB/hosts/$name/boot"
  done
  # hosts.json: what lamina.lab reads (names and values are validated: no JSON escaping needed)
  { printf '{"prefix": "%s", "net": "%s", "bridge": "%s", "init": "%s", "disks": "%s", "disks_dir": "%s", "hosts": [' \
      "$P" "$NET" "$BR" "$INIT" "$DISKS" "$DD"
    i=0; for pid in "${hostpids[@]}"; do i=$((i+1))
      t=$(cut -d' ' -f1 "/proc/$pid/task/$pid/children" 2>/dev/null || :)
      [ "$i" = 1 ] || printf ', '
      printf '\n  {"name": "%s", "address": "%s", "pid": %s, "lower": "%s"}' "$P$i" "$NET.$((10+i))" "${t:-$pid}" \
        "$(lower_of "$i")"
    done; printf '\n]}\n'; } > "$LAB/hosts.json.tmp"
  mv "$LAB/hosts.json.tmp" "$LAB/hosts.json"
}

# "; its log says: " + the last unindented line of host $1's log, if any, for failure message $2
# (not after a systemd boot timeout: its sshd is fine then)
log_tail() { local l; case $2 in systemd*) return 0 ;; esac
  l=$(grep -v '^[[:space:]]' "$LAB/hosts/$1/sshd.log" 2>/dev/null | tail -n 1 | tr -d '\r' || :)
  [ -z "$l" ] || echo "; its log says: $l"; }

# the pids whose namespace $1 (mnt, net...) is $2 (as readlink shows it: mnt:[4026531841])
ns_pids() { find /proc/[0-9]*/ns/"$1" -maxdepth 0 \
  -lname "$(printf '%s' "$2" | sed 's/[][*?\\]/\\&/g')" 2>/dev/null | cut -d/ -f3 || :; }

# Stop host NAME like pulling the plug, then boot it again: same name, address, host key, disks.
reboot_host() {
  local name=$1 i ip S p t hp st ok self pids=() mnts=()
  [[ $name =~ ^$P([1-9][0-9]?)$ ]] || die "no lab host $name in $LAB"
  i=${BASH_REMATCH[1]}
  grep -q "\"name\": \"$name\"" "$LAB/hosts.json" 2>/dev/null || die "no lab host $name in $LAB"
  [ "$DISKS" = persistent ] ||
    die "$name has tmpfs disks, which a reboot would wipe: start the lab with persistent disks (lamina lab up --disks persistent, or --init systemd)"
  ip=$NET.$((10+i)); S=$LAB/hosts/$name
  # its ssh control master (testinfra's) would multiplex new sessions onto the dead connection
  timeout 5 ssh -F "$LAB/ssh_config" -O exit "$name" >/dev/null 2>&1 || :
  # 1. kill everything in its netns: PID 1 dying ends its pid namespace; note their mount
  #    namespaces first (the host's, and `ip netns exec`'s), to wait until those are gone too
  self=$(readlink /proc/self/ns/mnt)
  mapfile -t pids < <(ip netns pids "$name" 2>/dev/null || :)
  for p in "${pids[@]}"; do
    t=$(readlink "/proc/$p/ns/mnt" 2>/dev/null || :)
    [ -z "$t" ] || [ "$t" = "$self" ] || [[ " ${mnts[*]} " == *" $t "* ]] || mnts+=("$t")
  done
  [ "${#pids[@]}" = 0 ] || kill -9 "${pids[@]}" 2>/dev/null || :
  for t in $(seq 100); do [ -z "$(ip netns pids "$name" 2>/dev/null || :)" ] && break; sleep 0.05; done
  [ -z "$(ip netns pids "$name" 2>/dev/null || :)" ] ||
    die "cannot stop $name: processes $(ip netns pids "$name" | xargs) survive SIGKILL"
  # 2. its mount namespace must be gone (then its overlay and binds are unmounted): a process that
  #    entered only that (nsenter -m) still holds it; it belongs to the host, so it goes too
  for t in "${mnts[@]}"; do
    for p in $(seq 100); do
      mapfile -t pids < <(ns_pids mnt "$t")
      [ "${#pids[@]}" = 0 ] && break
      kill -9 "${pids[@]}" 2>/dev/null || :; sleep 0.05
    done
    [ "${#pids[@]}" = 0 ] || die "cannot stop $name: processes ${pids[*]} keep its mount namespace"
  done
  # 3. a new network card (the old one's addresses, routes, firewall are gone, as on a real boot)
  ip link del "$name-h" 2>/dev/null || :; ip netns del "$name" 2>/dev/null || :
  if [ "$INIT" = systemd ]; then
    rm_cgroup "$(cgroot)/lamina-$name" || die "cannot remove cgroup $(cgroot)/lamina-$name (busy)"
  fi
  # 4. boot
  start_host "$i"; hp=$HOSTPID
  ok=0; st=$( (wait_host "$name" "$ip" "$hp" banner) 9>&-) || ok=$?
  # its new PID 1, even if it did not finish booting (status, down and `nsenter -t` find it)
  t=$(cut -d' ' -f1 "/proc/$hp/task/$hp/children" 2>/dev/null || :)
  sed -i -E "s/(\"name\": \"$name\", \"address\": \"[0-9.]+\", \"pid\": )[0-9]+/\1${t:-$hp}/" "$LAB/hosts.json"
  [ "$ok" = 0 ] || die "$name did not come back: $st$(log_tail "$name" "$st"); log: $S/sshd.log"
  echo "  $name $ip up$st"
}

load_conf() {  # the settings this lab was started with (reboot): not today's environment
  [ -s "$LAB/$MARK" ] || die "the lab in $LAB is down: start it with \`lamina lab up\`"
  P=$(head -n 1 "$LAB/$MARK"); BR=${P}br
  NET=$(conf net); INIT=$(conf init); DISKS=$(conf disks); DD=$(conf diskdir); LOWERS=$(conf lowers)
  N=$(wc -w <<< "$LOWERS")
  [[ -n $NET && -n $INIT && -n $DISKS && -n $LOWERS ]] ||
    die "$LAB was started by an older lamina: restart it (lamina lab up)"
  [ "$DISKS" = tmpfs ] || DISKS_DIR=${DD%/*}
}

# up/down of one lab never overlap; -w: never wait forever (lock fd leaked into a stray process)
# shellcheck disable=SC2174  # -m only for a parent we create (/run/lamina), never chmod /tmp
lock() { mkdir -p -m 700 "$(dirname "$LAB")"; exec 9>"$LAB.lock"
  flock -w 60 9 || die "another lab up/down holds $LAB.lock (see: fuser -v $LAB.lock)"; }
case "${1:-}" in
  up) check_env; lock; up ;;
  down) # the prefix this lab was started with, even if LAMINA_LAB_PREFIX changed since
    [ ! -s "$LAB/$MARK" ] || { P=$(head -n 1 "$LAB/$MARK"); BR=${P}br; }
    check_env; lock; down ;;
  reboot) [ -n "${2:-}" ] || die "usage: labhosts.sh reboot HOST"
    lock; load_conf; check_env; reboot_host "$2" ;;
  __hostinit) shift; hostinit "$@" ;;
  *) echo "usage: $0 up|down|reboot HOST   (see lamina lab --help)" >&2; exit 2 ;;
esac
