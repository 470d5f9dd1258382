#!/usr/bin/env bash
# labhosts.sh up|down — lamina's test hosts on one machine (root; iproute2, util-linux, openssh).
# Driven by `lamina lab` (lamina/lab.py); runnable alone for debugging: `bash labhosts.sh up`.
#
# Each host NAME (= $PREFIX$i, also its network namespace):
#   - own netns, eth0 = $NET.(10+i)/24 on bridge ${PREFIX}br (the machine is $NET.1)
#   - own mount/UTS/IPC/PID namespaces (mounts made on a host stay on that host)
#   - copy-on-write root: overlay, lower=$LOWER (default /), upper+work on a private tmpfs
#   - private tmpfs /run /tmp /srv /mnt /root (clean home) /dev/shm /var/lib/lamina
#   - /sys and /proc/sys read-only (except /proc/sys/net)
#   - own sshd (or systemd as PID 1 starting sshd, LAMINA_LAB_INIT=systemd) with a fresh ed25519
#     host key; sshd logs (LogLevel VERBOSE) to $LAB/hosts/NAME/sshd.log on the machine, one
#     "Starting session: ..." line per exec/subsystem/shell request (lamina.lab.exec_requests).
#
# Environment (two labs coexist when prefix, net and dir differ):
#   LAMINA_LAB_DIR    state dir, default /run/lamina/lab (mode 0700)
#   LAMINA_LAB_PREFIX host-name prefix, default lab (lab1..labN); names the bridge and veths
#   LAMINA_LAB_NET    first three octets of the /24, default 10.203.0
#   LAMINA_LAB_N      number of hosts for `up`, default 3
#   LAMINA_LAB_LOWER  lower dir of each host's root, default / (e.g. a debootstrap'ed tree)
#   LAMINA_LAB_INIT   sshd (default) or systemd
#
# Files in $LAB: id_ed25519 (client key), known_hosts ("NAME,IP key"), ssh_config
# (StrictHostKeyChecking yes), hosts.json (what `up` started), hosts/NAME/{sshd.log,sshd_config,
# ssh_host_ed25519_key*}.
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SELF=$(readlink -f "${BASH_SOURCE[0]}")
LAB=${LAMINA_LAB_DIR:-/run/lamina/lab}; P=${LAMINA_LAB_PREFIX:-lab}; NET=${LAMINA_LAB_NET:-10.203.0}
N=${LAMINA_LAB_N:-3}; LOWER=${LAMINA_LAB_LOWER:-/}; INIT=${LAMINA_LAB_INIT:-sshd}
BR=${P}br; MARK=.lamina-lab   # $LAB/$MARK: the lab's prefix; proof that $LAB is a lab dir

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
  [[ $LOWER =~ ^/[A-Za-z0-9._/-]*$ && -d $LOWER ]] || die "LAMINA_LAB_LOWER must be a directory, path of [A-Za-z0-9._/-]: $LOWER"
}

cgroot() { local c; for c in /sys/fs/cgroup/unified /sys/fs/cgroup; do
  [ "$(stat -fc %T "$c" 2>/dev/null)" = cgroup2fs ] && { echo "$c"; return; }; done; return 1; }

hostinit() {  # PID 1 of the host's pid ns, already inside its netns + private mount ns
  local name=$1 S=$LAB/hosts/$1 R=$LAB/hosts/$1/rw/root d
  hostname "$name"
  # upper/work must not live on an overlay (the machine's root may be one): own tmpfs, mounted in
  # this host's mount namespace only, so the machine never sees it and it vanishes with the host.
  mount -t tmpfs -o mode=755 "lab-$name-rw" "$S/rw"; mkdir -p "$S/rw"/{up,work,root}
  mount -t overlay -o "lowerdir=$LOWER,upperdir=$S/rw/up,workdir=$S/rw/work" "lab-$name-root" "$R"
  mount -t proc proc "$R/proc"
  # read-only /proc/sys: else systemd (or a test) in a host writes the machine's global sysctls
  mount --bind "$R/proc/sys" "$R/proc/sys"; mount -o remount,bind,ro "$R/proc/sys"
  mount --bind "$R/proc/sys/net" "$R/proc/sys/net"; mount -o remount,bind,rw "$R/proc/sys/net"
  mount -t sysfs -o ro sysfs "$R/sys"
  mount --rbind /dev "$R/dev"; mount --make-rprivate "$R/dev"
  mount -t tmpfs -o mode=1777 shm "$R/dev/shm"
  mount -t tmpfs -o mode=1777 tmp "$R/tmp"
  for d in run srv mnt; do mount -t tmpfs -o mode=755 "$d" "$R/$d"; done
  mkdir -p "$R/var/lib/lamina"; mount -t tmpfs -o mode=755 lamina "$R/var/lib/lamina"
  # clean home: the machine's ~/.bashrc may block (pyenv init) and sshd runs it for every command
  mount -t tmpfs -o mode=700 root "$R/root"
  cp "$R/usr/share/base-files/dot.bashrc" "$R/root/.bashrc" 2>/dev/null || :
  cp "$R/usr/share/base-files/dot.profile" "$R/root/.profile" 2>/dev/null || :
  mkdir -m 755 "$R/run/sshd" "$R/run/lab"
  cp "$S/ssh_host_ed25519_key" "$S/sshd_config" "$LAB/authorized_keys" "$R/run/lab/"
  echo "$name" > "$R/etc/hostname"
  { echo "127.0.0.1 localhost"; echo "127.0.1.1 $name"; cat "$LAB/hosts.lab"; } > "$R/etc/hosts"
  if [ "$INIT" = systemd ]; then
    mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"   # root = our cgroup ns = $(cgroot)/lamina-NAME
    mount --bind /dev/null "$R/dev/console"       # else systemd writes to the machine's console
    # systemd does not hand its stderr on: bind the machine-side log into the host for sshd
    : > "$R/run/lab/sshd.log"; mount --bind "$S/sshd.log" "$R/run/lab/sshd.log"
    printf '[Service]\nExecStart=/usr/sbin/sshd -D -e -f /run/lab/sshd_config\nStandardError=append:/run/lab/sshd.log\n' \
      > "$R/etc/systemd/system/lab-sshd.service"
    printf '[Unit]\nRequires=sysinit.target lab-sshd.service\nAfter=sysinit.target\nAllowIsolate=yes\n' \
      > "$R/etc/systemd/system/lab.target"
    ln -sf /dev/null "$R/etc/systemd/system/systemd-modules-load.service"
  fi
  cd "$R"; pivot_root . .; umount -l .; cd /      # detach the machine's root
  [ "$INIT" = systemd ] && exec env container=lamina-lab /lib/systemd/systemd --unit=lab.target
  exec /usr/sbin/sshd -D -e -f /run/lab/sshd_config
}

my_netns() { ip netns list | awk '{print $1}' | grep -E "^${P}[0-9]+\$" || :; }

# the lab dir that made bridge $BR (its alias), empty if none or no alias
bridge_owner() { { ip -o link show "$BR" 2>/dev/null || :; } | sed -n 's/.* alias \(.*\)$/\1/p'; }

down() {
  local ns s pids t owner
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
      for t in $(seq 50); do
        compgen -G "$s/lamina-${P}[0-9]*" >/dev/null || break
        for ns in "$s"/lamina-"$P"[0-9]*; do
          if [[ ${ns##*/} =~ ^lamina-${P}[0-9]+$ ]]; then
            find "$ns" -depth -type d -exec rmdir {} + 2>/dev/null || :
          fi
        done
        compgen -G "$s/lamina-${P}[0-9]*" >/dev/null && sleep 0.1
      done
    fi
  fi
  rm -rf "$LAB"
}

down_as() { local P=$1 BR=$1br; down; }   # bash: down sees these (dynamic scope)

up() {
  local i name ip S CG cgopt pid t hostpids=() waiters=()
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
  mkdir -p "$LAB/hosts"; chmod 700 "$LAB" "$LAB/hosts"; echo "$P" > "$LAB/$MARK"
  ssh-keygen -q -t ed25519 -N '' -C lamina-lab-client -f "$LAB/id_ed25519"
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
    name=$P$i; ip=$NET.$((10+i)); S=$LAB/hosts/$name; mkdir -p "$S/rw"
    ssh-keygen -q -t ed25519 -N '' -C "$name" -f "$S/ssh_host_ed25519_key"
    echo "$name,$ip $(cut -d' ' -f1,2 "$S/ssh_host_ed25519_key.pub")" >> "$LAB/known_hosts"
    # LogLevel VERBOSE: sshd logs "Starting session: command|subsystem 'sftp'|shell ..." once per
    # session request. OpenSSH 9.2 never logs the command text, not even at DEBUG3.
    printf '%s\n' "ListenAddress $ip" "HostKey /run/lab/ssh_host_ed25519_key" "PidFile /run/sshd.pid" \
      "AuthorizedKeysFile /run/lab/authorized_keys" "PermitRootLogin prohibit-password" \
      "PasswordAuthentication no" "KbdInteractiveAuthentication no" "UsePAM no" "UseDNS no" \
      "PrintMotd no" "MaxStartups 100" "MaxSessions 100" "LogLevel VERBOSE" \
      "Subsystem sftp /usr/lib/openssh/sftp-server" > "$S/sshd_config"
    ip netns add "$name"
    ip link add "$name-h" type veth peer name eth0 netns "$name"
    ip link set "$name-h" master "$BR" up
    ip -n "$name" addr add "$ip/24" dev eth0; ip -n "$name" link set eth0 up; ip -n "$name" link set lo up
    CG=; cgopt=; if [ "$INIT" = systemd ]; then CG=$(cgroot)/lamina-$name; mkdir "$CG"; cgopt=--cgroup; fi
    # 9>&-: the host must not inherit the lock fd (down would wait on it forever); all output goes
    # to the host's log, so whoever captures our stdout/stderr is not kept waiting by the host.
    # shellcheck disable=SC2016  # $1/$$ belong to the inner sh
    setsid sh -c '[ -z "$1" ] || echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$CG" \
      ip netns exec "$name" unshare $cgopt --mount --uts --ipc --pid --fork --kill-child \
      --propagation private bash "$SELF" __hostinit "$name" </dev/null >"$S/sshd.log" 2>&1 9>&- &
    hostpids+=($!)   # the unshare process; its child is the host's PID 1
  done
  # wait for every sshd in parallel: a real login (key, known_hosts, shell) proves the host works
  for i in $(seq "$N"); do
    ( for t in $(seq 150); do
        ssh -F "$LAB/ssh_config" -o BatchMode=yes "$P$i" true </dev/null >/dev/null 2>&1 && exit 0
        kill -0 "${hostpids[i-1]}" 2>/dev/null || exit 1   # the host died: no use waiting
        sleep 0.1
      done; exit 1 ) 9>&- &
    waiters+=($!)
  done
  for i in $(seq "$N"); do name=$P$i
    wait "${waiters[i-1]}" ||
      die "$name did not start: $(grep -v '^[[:space:]]' "$LAB/hosts/$name/sshd.log" | tail -n 1); log: $LAB/hosts/$name/sshd.log"
    echo "  $name $NET.$((10+i)) up"
  done
  # hosts.json: what lamina.lab reads (names and values are validated: no JSON escaping needed)
  { printf '{"prefix": "%s", "net": "%s", "bridge": "%s", "init": "%s", "lower": "%s", "hosts": [' \
      "$P" "$NET" "$BR" "$INIT" "$LOWER"
    i=0; for pid in "${hostpids[@]}"; do i=$((i+1))
      t=$(cut -d' ' -f1 "/proc/$pid/task/$pid/children" 2>/dev/null || :)
      [ "$i" = 1 ] || printf ', '
      printf '\n  {"name": "%s", "address": "%s", "pid": %s}' "$P$i" "$NET.$((10+i))" "${t:-$pid}"
    done; printf '\n]}\n'; } > "$LAB/hosts.json.tmp"
  mv "$LAB/hosts.json.tmp" "$LAB/hosts.json"
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
  __hostinit) shift; hostinit "$@" ;;
  *) echo "usage: $0 up|down   (see lamina lab --help)" >&2; exit 2 ;;
esac
