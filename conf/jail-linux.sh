#!/bin/sh
# bitelab setup script for Linux: one contained jail per reservation.
#
#   jail-linux.sh reserve BOARD
#   jail-linux.sh release BOARD
#
# The bitelab server runs this with BITELAB_BOARD, BITELAB_USER,
# BITELAB_SSHPUBKEY and, when the board has one, BITELAB_ETHERIFACE in the
# environment (see docs/jails.rst for the whole protocol).
#
# reserve builds the jail for BOARD:
#   - an account PREFIX+BOARD with a UID no jail had before, that may log in
#     only with the key given at reserve,
#   - a network namespace PREFIX+BOARD holding the board's interface, owned
#     by a user namespace of that account: there the account has root's
#     powers over the network, and nowhere else,
#   - a veth pair linking it to the host, addressed from a /30 of the pool,
#   - cgroups holding everything the jail runs, with memory, process and CPU
#     limits,
#   - an OpenSSH server as the first process of the jail's own PID, mount,
#     IPC and UTS namespaces, where the host's file system is read-only and
#     home, /tmp, /var/tmp, /dev/shm and /run are the jail's own,
# and prints, one per line:
#   ip=ADDRESS ssh_port=PORT ssh_user=NAME ssh_hostkey=FINGERPRINT
#   net_admin=yes|no [iface=NAME]
#
# release kills everything in the jail's cgroups at once (the kernel kills
# the whole PID namespace with its first process), waits until nothing is
# left, hands the interface back and deletes the account with its files.
#
# Both actions are idempotent.  After a crash the server may run release
# again for a release that half-ran, or to undo a reserve that was killed
# at any point; release then removes whatever is there and succeeds when
# there is nothing.  reserve first removes anything left of an earlier jail
# for the board.  See docs/jails.rst for what the user can and cannot do.
#
# Needs: iproute2, openssh-server, openssh-client (ssh-keygen), passwd
# (useradd/userdel), procps (pgrep), util-linux (unshare, nsenter, setpriv,
# setsid, prlimit, flock); a kernel with cgroups and user namespaces.

set -eu

# The server passes its own PATH, which may lack the admin tools.
PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
export PATH

# --- Site configuration ----------------------------------------------------
# Edit the defaults here, or point setup_script at a wrapper that exports
# BITELAB_JAIL_* and execs this script: the server passes only PATH and the
# BITELAB_* variables of the protocol.

# Root-only state: the shared host key, per-jail sshd files, address slots,
# the next UID.
STATE_DIR=${BITELAB_JAIL_STATE_DIR:-/var/lib/bitelab/jails}
# Home directories of the jail accounts are made (and removed) under here.
HOME_BASE=${BITELAB_JAIL_HOME_DIR:-/var/lib/bitelab/homes}
# Namespace, account and cgroup name: PREFIX + board name (32 chars max).
PREFIX=${BITELAB_JAIL_PREFIX:-bl-}
# veth names: VETH_PREFIX + h|j + slot (host and jail end; 15 chars max).
VETH_PREFIX=${BITELAB_JAIL_VETH_PREFIX:-blv}
# Each jail gets one /30 of this pool: .1 on the host, .2 in the jail.
POOL=${BITELAB_JAIL_POOL:-10.203.0.0/22}
SSH_PORT=${BITELAB_JAIL_SSH_PORT:-22}
SSHD=${BITELAB_JAIL_SSHD:-/usr/sbin/sshd}
USER_SHELL=${BITELAB_JAIL_SHELL:-/bin/bash}
# Optional address (CIDR) put on the board's interface inside the jail.
IFACE_ADDR=${BITELAB_JAIL_IFACE_ADDR:-}
# Directories replaced by a fresh writable tmpfs in the jail (/run always
# is); everything else of the host is read-only there.  STATE_DIR and
# HOME_BASE must not lie below any of them.
PRIVATE_DIRS=${BITELAB_JAIL_PRIVATE_DIRS-/tmp /var/tmp /dev/shm}
# "yes": the jail's /proc shows only the account's own processes.
HIDE_PIDS=${BITELAB_JAIL_HIDE_PIDS:-yes}
# Root's powers over the jail's network: "auto" where the kernel lets the
# account own a user namespace, "yes" (fail without) or "no".
NET_ADMIN=${BITELAB_JAIL_NET_ADMIN:-auto}
# UIDs for jail accounts, FIRST-LAST; each is given once (the counter is in
# STATE_DIR).  Far from ordinary, system and container ranges.
UIDS=${BITELAB_JAIL_UIDS:-1900000000-1999999999}
# Parent of the jails' cgroups, relative to each cgroup hierarchy's root.
CGROUP=${BITELAB_JAIL_CGROUP:-bitelab-jails}
# Limits of one jail: memory (bytes, with K, M, G or T, or a percentage of
# the host's RAM, or "max"); processes and threads (or "max"); CPU weight
# against other cgroups (1-10000, 100 is the kernel's default).
MEMORY_MAX=${BITELAB_JAIL_MEMORY_MAX:-50%}
PIDS_MAX=${BITELAB_JAIL_PIDS_MAX:-1024}
CPU_WEIGHT=${BITELAB_JAIL_CPU_WEIGHT:-100}

# --- Helpers ----------------------------------------------------------------

PROG=bitelab-jail
ERRFILE=
FAIL_MSG=
RUN_PID=
CLEAN_ON_FAILURE=no

# fail MESSAGE: stop; the exit trap cleans up and prints MESSAGE last, as the
# server shows the last line of stderr to the user.
fail() {
    FAIL_MSG=$*
    exit 1
}

# run WHAT CMD...: run CMD quietly; if it fails, fail with "cannot WHAT"
# followed by the last line CMD printed.
run() {
    _what=$1
    shift
    _rc=0
    # In the background, because the shell acts on a signal (the server's
    # time-out) during "wait" but not while a foreground command runs.
    "$@" >"$ERRFILE" 2>&1 </dev/null &
    RUN_PID=$!
    wait "$RUN_PID" || _rc=$?
    RUN_PID=
    if [ "$_rc" -ne 0 ]; then
        _said=$(tail -n 1 "$ERRFILE")
        fail "cannot $_what: ${_said:-$1 exited with status $_rc}"
    fi
}

# unlocked CMD...: run an account tool (useradd and the like), waiting out
# the lock on the account files that one killed a moment ago may leave
# until the system reaps it.
unlocked() {
    _n=0
    while :; do
        _rc=0
        _out=$("$@" 2>&1) || _rc=$?
        case $_rc.$_out in
        0.*) return 0 ;;
        *"cannot lock"*) [ "$_n" -lt 20 ] || break ;;
        *) break ;;
        esac
        _n=$((_n + 1))
        sleep 0.25
    done
    printf '%s\n' "$_out" >&2
    return "$_rc"
}

# write VALUE FILE: for cgroup and /proc files, with the error as a message.
write() {
    # shellcheck disable=SC2016 # the inner shell expands
    run "write $1 to $2" sh -c 'echo "$1" >"$2"' sh "$1" "$2"
}

on_exit() {
    _status=$?
    trap - EXIT INT TERM HUP
    if [ "$_status" -ne 0 ] && [ "$CLEAN_ON_FAILURE" = yes ]; then
        teardown >/dev/null 2>&1 ||
            FAIL_MSG="$FAIL_MSG; cleaning up failed too: $TEARDOWN_PROBLEM"
    fi
    if [ -n "$ERRFILE" ]; then
        rm -f "$ERRFILE"
    fi
    if [ "$_status" -ne 0 ]; then
        echo "$PROG: ${FAIL_MSG:-$ACTION of $BOARD failed}" >&2
    fi
    exit "$_status"
}

on_signal() {
    if [ -n "$RUN_PID" ]; then
        kill "$RUN_PID" 2>/dev/null || true
    fi
    FAIL_MSG="$ACTION of $BOARD interrupted (timed out?)"
    exit 1
}

ip_to_int() {
    _old_ifs=$IFS
    IFS=.
    # shellcheck disable=SC2086 # splitting on dots is the point
    set -- $1
    IFS=$_old_ifs
    echo $((($1 << 24) + ($2 << 16) + ($3 << 8) + $4))
}

int_to_ip() {
    echo "$((($1 >> 24) & 255)).$((($1 >> 16) & 255)).$((($1 >> 8) & 255)).$(($1 & 255))"
}

is_number() {
    case $1 in
    "" | *[!0-9]*) return 1 ;;
    esac
}

netns_exists() {
    ip netns list | awk '{ print $1 }' | grep -qxF "$NS"
}

# Is ACCOUNT an account this script made (and so may delete)?
our_account() {
    [ "$(getent passwd "$ACCOUNT" | cut -d: -f5)" = "bitelab jail $BOARD" ]
}

# Slots are symlinks STATE_DIR/slots/N -> BOARD; ln -s is atomic, so two
# reserves running at once never get the same slot.
claim_slot() {
    _n=0
    while [ "$_n" -lt "$SLOTS" ]; do
        if ln -s "$BOARD" "$STATE_DIR/slots/$_n" 2>/dev/null; then
            SLOT=$_n
            return 0
        fi
        _n=$((_n + 1))
    done
    fail "no free address in the jail pool $POOL; release a board or enlarge BITELAB_JAIL_POOL"
}

# Slots held by BOARD, one per line (normally one; more after a crash).
board_slots() {
    for _link in "$STATE_DIR"/slots/*; do
        [ -L "$_link" ] || continue
        [ "$(readlink "$_link")" = "$BOARD" ] && basename "$_link"
    done
    return 0
}

# Mount points of the cgroup hierarchies jails use: the cgroup2 one and the
# version 1 ones with the memory, pids or cpu controller.
cgroup_roots() {
    awk '$3 == "cgroup2" || ($3 == "cgroup" && $4 ~ /(^|,)(memory|pids|cpu)(,|$)/) {
        print $2
    }' /proc/self/mounts
}

# The jail's cgroups that exist, one per line.
jail_cgroups() {
    for _root in $(cgroup_roots); do
        [ -d "$_root/$CGROUP/$NS" ] && echo "$_root/$CGROUP/$NS"
    done
    return 0
}

# PIDs of everything in the jail's cgroups ($1), its network namespace and
# of its account (nothing should be outside the cgroups; belt and braces).
jail_pids() {
    for _cg in $1; do
        cat "$_cg/cgroup.procs" 2>/dev/null || true
    done
    if netns_exists; then
        ip netns pids "$NS" 2>/dev/null || true
    fi
    if [ -n "$2" ]; then
        pgrep -U "$2" 2>/dev/null || true
    fi
}

# One run per board at a time.  The server never starts two, so a run still
# going for BOARD was left behind by a server that crashed: end it, with its
# process group, so that it cannot build again what this run takes down.
# Every run for BOARD holds the board's lock file open as descriptor 7.
take_board() {
    mkdir -p "$STATE_DIR/locks"
    exec 7>>"$STATE_DIR/locks/$NS"
    flock -n 7 && return 0
    _lock=$(readlink /proc/$$/fd/7)
    for _fd in /proc/[0-9]*/fd/7; do
        [ "$(readlink "$_fd" 2>/dev/null)" = "$_lock" ] || continue
        _pid=${_fd#/proc/}
        _pid=${_pid%%/*}
        [ "$_pid" = $$ ] && continue
        if [ "$(ps -o pgid= -p "$_pid" | tr -d ' ')" = "$_pid" ]; then
            kill -KILL "-$_pid" 2>/dev/null || true
        else
            kill -KILL "$_pid" 2>/dev/null || true
        fi
    done
    flock -w 10 7 || fail "another run for $BOARD holds $_lock and would not end"
}

# --- Teardown (release, and cleanup of a failed reserve) -------------------

# Kill every process of the jail and wait until none is left.  The first
# process of the jail's PID namespace takes the whole namespace with it
# (nested ones included); cgroup.kill gets the rest at once, and the loop
# covers hosts without it.
kill_jail() {
    _cgroups=$(jail_cgroups)
    _uid=
    if our_account; then
        _uid=$(id -u "$ACCOUNT")
    fi
    for _cg in $_cgroups; do
        if [ -e "$_cg/cgroup.kill" ]; then
            echo 1 >"$_cg/cgroup.kill" || true
        fi
    done
    _try=0
    while :; do
        _pids=$(jail_pids "$_cgroups" "$_uid")
        [ -z "$_pids" ] && break
        _try=$((_try + 1))
        if [ "$_try" -gt 100 ]; then
            # shellcheck disable=SC2086,SC2116 # on one line
            TEARDOWN_PROBLEM="processes of jail $NS would not die: $(echo $_pids)"
            return 0
        fi
        # shellcheck disable=SC2086 # one argument per pid
        kill -KILL $_pids 2>/dev/null || true
        sleep 0.1
    done
    for _cg in $_cgroups; do
        rmdir "$_cg" 2>/dev/null || [ ! -d "$_cg" ] ||
            TEARDOWN_PROBLEM="cannot remove cgroup $_cg"
    done
}

# Bring the board's interface home, under its own name, address and MTU
# (the jail's root may have changed them), up if it was.  Fails only if it
# cannot: deleting the namespace would destroy a VLAN interface inside it.
return_iface() {
    _name=${BITELAB_ETHERIFACE:-}
    _idx='' _mac=- _mtu='' _up=no
    if [ -s "$JAIL_DIR/iface" ]; then
        read -r _name _idx _mac _mtu _up <"$JAIL_DIR/iface"
    fi
    [ -n "$_name" ] || return 0
    if netns_exists; then
        # Found by index: the jail's root may have renamed it.
        _cur=$(ip -n "$NS" -o link show | awk -F': ' -v name="$_name" -v idx="$_idx" '
            { sub(/@.*/, "", $2) }
            $1 == idx || (idx == "" && $2 == name) { print $2; exit }')
        if [ -n "$_cur" ]; then
            ip -n "$NS" link set dev "$_cur" down 2>/dev/null || true
            if [ "$_cur" != "$_name" ]; then
                # A device of the jail's may have taken the name.
                ip -n "$NS" link del "$_name" 2>/dev/null || true
                ip -n "$NS" link set dev "$_cur" name "$_name" 2>/dev/null || true
            fi
            if ! ip -n "$NS" link set dev "$_name" netns $$ 2>/dev/null; then
                TEARDOWN_PROBLEM="cannot move interface $_name back to the host; left in namespace $NS"
                return 0
            fi
        fi
    fi
    # The kernel hands a physical interface back a moment after a namespace
    # the user made for it dies.
    _try=0
    until ip link show dev "$_name" >/dev/null 2>&1; do
        _try=$((_try + 1))
        if [ "$_try" -gt 20 ] || [ ! -s "$JAIL_DIR/iface" ]; then
            if [ -s "$JAIL_DIR/iface" ]; then
                TEARDOWN_PROBLEM="interface $_name of $BOARD did not come back from the jail (deleted there?); recreate it, then end the board's maintenance"
            fi
            return 0
        fi
        sleep 0.1
    done
    if [ "$_mac" != - ]; then
        ip link set dev "$_name" address "$_mac" 2>/dev/null || true
    fi
    if [ -n "$_mtu" ]; then
        ip link set dev "$_name" mtu "$_mtu" 2>/dev/null || true
    fi
    if [ "$_up" = yes ]; then
        ip link set dev "$_name" up 2>/dev/null || true
    fi
}

# Take down everything of BOARD's jail that exists, whatever state a
# reserve or release left it in.
teardown() {
    TEARDOWN_PROBLEM=

    kill_jail
    [ -n "$TEARDOWN_PROBLEM" ] && return 1
    return_iface
    [ -n "$TEARDOWN_PROBLEM" ] && return 1

    for _slot in $(board_slots); do
        ip link del "${VETH_PREFIX}h$_slot" 2>/dev/null || true
        rm -f "$STATE_DIR/slots/$_slot"
    done
    if netns_exists; then
        ip netns del "$NS" 2>/dev/null || TEARDOWN_PROBLEM="cannot delete namespace $NS"
    fi

    if our_account; then
        unlocked userdel -r "$ACCOUNT" >/dev/null 2>&1 || true
        our_account && TEARDOWN_PROBLEM="cannot remove account $ACCOUNT"
    fi
    if ! getent passwd "$ACCOUNT" >/dev/null; then
        rm -rf "${HOME_BASE:?}/${ACCOUNT:?}"
        # The group of an account whose reserve was killed before useradd.
        _gid=$(getent group "$ACCOUNT" | cut -d: -f3)
        if [ -n "$_gid" ] && [ "$_gid" -ge "$UID_FIRST" ] && [ "$_gid" -le "$UID_LAST" ]; then
            unlocked groupdel "$ACCOUNT" 2>/dev/null || TEARDOWN_PROBLEM="cannot remove group $ACCOUNT"
        fi
    fi

    [ -n "$TEARDOWN_PROBLEM" ] && return 1
    rm -rf "${JAIL_DIR:?}"
    rm -f "$ERRFILE"
}

# --- Reserve ----------------------------------------------------------------

# Check the limits; MEMORY_MAX in bytes (or "max") becomes MEMORY_BYTES.
check_limits() {
    _n=${MEMORY_MAX%[%KkMmGgTt]}
    if [ "$MEMORY_MAX" != max ] && ! { is_number "$_n" && [ "$_n" -gt 0 ]; }; then
        fail "bad BITELAB_JAIL_MEMORY_MAX $MEMORY_MAX: want bytes (e.g. 2G), a percentage of RAM (e.g. 50%) or max"
    fi
    case $MEMORY_MAX in
    max) MEMORY_BYTES=max ;;
    *%) MEMORY_BYTES=$(($(awk '$1 == "MemTotal:" { print $2 }' /proc/meminfo) * 1024 * _n / 100)) ;;
    *[Kk]) MEMORY_BYTES=$((_n << 10)) ;;
    *[Mm]) MEMORY_BYTES=$((_n << 20)) ;;
    *[Gg]) MEMORY_BYTES=$((_n << 30)) ;;
    *[Tt]) MEMORY_BYTES=$((_n << 40)) ;;
    *) MEMORY_BYTES=$_n ;;
    esac
    if [ "$PIDS_MAX" != max ] && ! { is_number "$PIDS_MAX" && [ "$PIDS_MAX" -gt 0 ]; }; then
        fail "bad BITELAB_JAIL_PIDS_MAX $PIDS_MAX: want a number of processes or max"
    fi
    if ! is_number "$CPU_WEIGHT" || [ "$CPU_WEIGHT" -lt 1 ] || [ "$CPU_WEIGHT" -gt 10000 ]; then
        fail "bad BITELAB_JAIL_CPU_WEIGHT $CPU_WEIGHT: want 1 to 10000"
    fi
    case $NET_ADMIN in
    auto | yes | no) ;;
    *) fail "bad BITELAB_JAIL_NET_ADMIN $NET_ADMIN: want auto, yes or no" ;;
    esac
}

# set_limit VERSION CONTROLLER CGROUP
set_limit() {
    case $1.$2 in
    2.memory) write "$MEMORY_BYTES" "$3/memory.max" ;;
    1.memory) write "$([ "$MEMORY_BYTES" = max ] && echo -1 || echo "$MEMORY_BYTES")" \
        "$3/memory.limit_in_bytes" ;;
    *.pids) write "$PIDS_MAX" "$3/pids.max" ;;
    2.cpu) write "$CPU_WEIGHT" "$3/cpu.weight" ;;
    1.cpu) write $((CPU_WEIGHT * 1024 / 100)) "$3/cpu.shares" ;;
    esac
}

# Make the jail's cgroups with their limits: one in the cgroup2 hierarchy,
# plus version 1 ones for controllers it lacks (hybrid hosts).  Sets
# JAIL_CGROUPS, the cgroups every process of the jail joins.
make_cgroups() {
    JAIL_CGROUPS=
    _want="memory pids cpu"
    _v2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
    if [ -n "$_v2" ]; then
        _dir=$_v2
        for _part in $(echo "$CGROUP/$NS" | tr / ' '); do
            # Each level hands the controllers down to the next.
            for _c in $_want; do
                if grep -qw "$_c" "$_dir/cgroup.controllers"; then
                    { echo "+$_c" >"$_dir/cgroup.subtree_control"; } 2>/dev/null || true
                fi
            done
            _dir=$_dir/$_part
            run "create cgroup $_dir" mkdir -p "$_dir"
        done
        JAIL_CGROUPS=$_dir
        _left=
        for _c in $_want; do
            if grep -qw "$_c" "$_dir/cgroup.controllers"; then
                set_limit 2 "$_c" "$_dir"
            else
                _left="$_left $_c"
            fi
        done
        _want=$_left
    fi
    for _c in $_want; do
        _root=$(awk -v c="$_c" '$3 == "cgroup" && $4 ~ ("(^|,)" c "(,|$)") { print $2; exit }' /proc/self/mounts)
        [ -n "$_root" ] || continue
        run "create cgroup $_root/$CGROUP/$NS" mkdir -p "$_root/$CGROUP/$NS"
        set_limit 1 "$_c" "$_root/$CGROUP/$NS"
        JAIL_CGROUPS="$JAIL_CGROUPS $_root/$CGROUP/$NS"
    done
    [ -n "$JAIL_CGROUPS" ] ||
        fail "no cgroup hierarchy to hold the jail; mount cgroup2 on /sys/fs/cgroup"
}

# A UID no jail had before, so that nothing the kernel keeps per UID
# (keyrings, say) passes to a later holder.
allocate_uid() {
    exec 9>"$STATE_DIR/uids.lock"
    flock -w 30 9 || fail "cannot lock $STATE_DIR/uids.lock"
    _uid=$(cat "$STATE_DIR/next-uid" 2>/dev/null || true)
    if ! is_number "$_uid" || [ "$_uid" -lt "$UID_FIRST" ]; then
        _uid=$UID_FIRST
    fi
    while [ "$_uid" -le "$UID_LAST" ] &&
        { getent passwd "$_uid" || getent group "$_uid"; } >/dev/null; do
        _uid=$((_uid + 1))
    done
    [ "$_uid" -le "$UID_LAST" ] ||
        fail "no unused UID left in BITELAB_JAIL_UIDS $UIDS; give a new range"
    echo $((_uid + 1)) >"$STATE_DIR/next-uid.new"
    mv "$STATE_DIR/next-uid.new" "$STATE_DIR/next-uid"
    exec 9>&-
    JAIL_UID=$_uid
}

# The jail's network namespace.  Made by a process of the account inside a
# new user namespace, which the account therefore owns: the kernel gives an
# owner every capability over that user namespace's network namespace, and
# nothing more.  The account is root in that user namespace, where the jail
# lets it enter (for programs that insist on being root).  The process,
# HOLDER, stays until the jail has a handle on the user namespace.  Falls
# back to a namespace of the host's (NET_ADMIN=auto) where the kernel does
# not let the account make a user namespace.
make_netns() {
    NET_OWNED=no
    HOLDER=
    if [ "$NET_ADMIN" != no ]; then
        _host_net=$(readlink /proc/self/ns/net)
        # In the jail's cgroups, so that teardown finds it whenever the
        # reserve is killed.
        # shellcheck disable=SC2016,SC2086 # inner shell expands; cgroups are words
        sh -c 'uid=$1
            shift
            for cg; do echo $$ >"$cg/cgroup.procs" || exit 1; done
            exec setpriv --reuid="$uid" --regid="$uid" --clear-groups \
                unshare --user --net sleep infinity' sh "$JAIL_UID" $JAIL_CGROUPS \
            >"$ERRFILE" 2>&1 </dev/null 7>&- &
        HOLDER=$!
        _try=0
        while kill -0 "$HOLDER" 2>/dev/null && [ "$_try" -lt 100 ]; do
            _net=$(readlink "/proc/$HOLDER/ns/net" 2>/dev/null || true)
            if [ -n "$_net" ] && [ "$_net" != "$_host_net" ]; then
                {
                    echo "0 $JAIL_UID 1" >"/proc/$HOLDER/uid_map" &&
                        echo "0 $JAIL_UID 1" >"/proc/$HOLDER/gid_map" &&
                        ip netns attach "$NS" "$HOLDER"
                } >"$ERRFILE" 2>&1 && NET_OWNED=yes
                break
            fi
            _try=$((_try + 1))
            sleep 0.05
        done
        if [ "$NET_OWNED" = no ]; then
            kill "$HOLDER" 2>/dev/null || true
            HOLDER=
        fi
        if [ "$NET_OWNED" = no ] && [ "$NET_ADMIN" = yes ]; then
            _said=$(tail -n 1 "$ERRFILE")
            fail "cannot give $ACCOUNT a network namespace of its own: ${_said:-no user namespace}; see docs/jails.rst"
        fi
    fi
    if [ "$NET_OWNED" = no ]; then
        run "create namespace $NS" ip netns add "$NS"
    fi
}

reserve() {
    SSHPUBKEY=${BITELAB_SSHPUBKEY:-}
    IFACE=${BITELAB_ETHERIFACE:-}

    for _dir in /run $PRIVATE_DIRS; do
        case $STATE_DIR/ in "$_dir"/*) fail "BITELAB_JAIL_STATE_DIR $STATE_DIR lies below private dir $_dir; move it" ;; esac
        case $HOME_BASE/ in "$_dir"/*) fail "BITELAB_JAIL_HOME_DIR $HOME_BASE lies below private dir $_dir; move it" ;; esac
    done
    if getent passwd "$ACCOUNT" >/dev/null && ! our_account; then
        fail "account $ACCOUNT exists and is not a bitelab jail; rename it or set BITELAB_JAIL_PREFIX"
    fi

    mkdir -p "$STATE_DIR/slots" "$STATE_DIR/run" "$HOME_BASE"
    chmod 0755 "$STATE_DIR" "$STATE_DIR/run" "$HOME_BASE"
    chmod 0700 "$STATE_DIR/slots"

    # A reserve killed on time-out cannot clean up after itself: the server
    # only reserves a board nobody holds, so anything left of BOARD is stale.
    teardown >/dev/null 2>&1 ||
        fail "leftovers of an earlier jail for $BOARD: $TEARDOWN_PROBLEM"
    # Checked only now, as a stale jail may have held the interface.
    if [ -n "$IFACE" ] && ! ip link show dev "$IFACE" >/dev/null 2>&1; then
        fail "interface $IFACE of $BOARD not found on the host; check the board's etheriface"
    fi

    # From here on, any failure takes down what was built.
    CLEAN_ON_FAILURE=yes
    mkdir -m 0750 "$JAIL_DIR"

    if [ -n "$SSHPUBKEY" ]; then
        case $SSHPUBKEY in
        *"
"*) fail "the SSH public key must be a single line" ;;
        esac
        printf '%s\n' "$SSHPUBKEY" >"$JAIL_DIR/authorized_keys"
        ssh-keygen -l -f "$JAIL_DIR/authorized_keys" >/dev/null 2>&1 ||
            fail "the SSH public key is not an OpenSSH public key; give the .pub file"
    else
        : >"$JAIL_DIR/authorized_keys"
    fi

    claim_slot
    _net=$(ip_to_int "${POOL%/*}")
    _host_ip=$(int_to_ip $((_net + SLOT * 4 + 1)))
    _jail_ip=$(int_to_ip $((_net + SLOT * 4 + 2)))
    _veth_host=${VETH_PREFIX}h$SLOT
    _veth_jail=${VETH_PREFIX}j$SLOT

    allocate_uid
    run "create group $ACCOUNT" unlocked groupadd --gid "$JAIL_UID" "$ACCOUNT"
    run "create account $ACCOUNT" unlocked useradd --uid "$JAIL_UID" --gid "$JAIL_UID" \
        --no-log-init --create-home --home-dir "$HOME_BASE/$ACCOUNT" \
        --shell "$USER_SHELL" --password '*' --comment "bitelab jail $BOARD" "$ACCOUNT"
    chmod 0700 "$HOME_BASE/$ACCOUNT"

    make_cgroups
    make_netns
    run "bring up lo in $NS" ip -n "$NS" link set lo up

    run "create veth $_veth_host" ip link add "$_veth_host" type veth peer name "$_veth_jail"
    run "move $_veth_jail into $NS" ip link set "$_veth_jail" netns "$NS"
    # The jail's root can send anything: drop packets with forged source
    # addresses, and never take IPv6 routes from router advertisements.
    write 1 "/proc/sys/net/ipv4/conf/$_veth_host/rp_filter"
    if [ -e "/proc/sys/net/ipv6/conf/$_veth_host" ]; then
        write 1 "/proc/sys/net/ipv6/conf/$_veth_host/disable_ipv6"
    fi
    run "address $_veth_host" ip addr add "$_host_ip/30" dev "$_veth_host"
    run "bring up $_veth_host" ip link set "$_veth_host" up
    run "address $_veth_jail" ip -n "$NS" addr add "$_jail_ip/30" dev "$_veth_jail"
    run "bring up $_veth_jail" ip -n "$NS" link set "$_veth_jail" up
    run "route $NS to the host" ip -n "$NS" route add default via "$_host_ip"

    if [ -n "$IFACE" ]; then
        # What release restores: name, index, MAC address, MTU, up or not.
        ip -o link show dev "$IFACE" | awk -F': ' -v name="$IFACE" '{
            up = ($3 ~ /^<([^>]*,)?UP[,>]/) ? "yes" : "no"
            mac = "-"
            n = split($3, w, " ")
            for (i = 1; i < n; i++) {
                if (w[i] == "mtu") mtu = w[i + 1]
                if (w[i] == "link/ether") mac = w[i + 1]
            }
            print name, $1, mac, mtu, up
        }' >"$JAIL_DIR/iface"
        run "move interface $IFACE into $NS" ip link set dev "$IFACE" netns "$NS"
        run "bring up $IFACE in $NS" ip -n "$NS" link set dev "$IFACE" up
        if [ -n "$IFACE_ADDR" ]; then
            run "address $IFACE with $IFACE_ADDR" ip -n "$NS" addr add "$IFACE_ADDR" dev "$IFACE"
        fi
    fi

    # Low ports (TFTP, DHCP, HTTP servers for the board) and ping need no
    # privilege in the jail's namespace, even where it is the host's.
    run "allow low ports in $NS" ip netns exec "$NS" \
        sysctl -qw net.ipv4.ip_unprivileged_port_start=0
    run "allow ping in $NS" ip netns exec "$NS" \
        sysctl -qw net.ipv4.ping_group_range="$JAIL_UID $JAIL_UID"

    # The account reads its keys (sshd opens them as the user), but neither
    # it nor other jails' accounts may change them.
    chgrp "$JAIL_UID" "$JAIL_DIR" "$JAIL_DIR/authorized_keys"
    chmod 0640 "$JAIL_DIR/authorized_keys"

    # One host key for all jails, so a user's known_hosts stays valid when
    # addresses are reused.  ln makes creating it race-free.
    _hostkey=$STATE_DIR/ssh_host_ed25519_key
    if [ ! -e "$_hostkey" ]; then
        rm -f "$_hostkey.$$" "$_hostkey.$$.pub"
        run "generate the jail host key" ssh-keygen -q -t ed25519 -N '' -C bitelab-jail -f "$_hostkey.$$"
        ln "$_hostkey.$$" "$_hostkey" 2>/dev/null || true
        rm -f "$_hostkey.$$" "$_hostkey.$$.pub"
    fi
    _fingerprint=$(ssh-keygen -l -f "$_hostkey" | awk '{ print $2 }')

    cat >"$JAIL_DIR/sshd_config" <<EOF
# sshd of the bitelab jail for $BOARD; written by $0.
ListenAddress $_jail_ip:$SSH_PORT
HostKey $_hostkey
PidFile none
AuthorizedKeysFile $JAIL_DIR/authorized_keys
AllowUsers $ACCOUNT
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
PermitRootLogin no
PermitUserEnvironment no
PermitTunnel no
X11Forwarding no
StrictModes yes
UsePAM no
PrintMotd no
PrintLastLog no
LogLevel VERBOSE
Subsystem sftp internal-sftp
EOF
    # Debian's sshd checks for its privilege separation directory even with
    # -t; it exists only while the host's own sshd service runs.
    [ -d /run/sshd ] || mkdir -m 0755 /run/sshd
    run "check the jail's sshd configuration" "$SSHD" -t -f "$JAIL_DIR/sshd_config"

    # The jail proper: this script again ("jail-init", below) as the first
    # process of new PID, mount, IPC, UTS and cgroup namespaces inside the
    # network namespace, in a session of its own so that it outlives us.
    : >"$JAIL_DIR/jail.log"
    chmod 0600 "$JAIL_DIR/jail.log"
    # shellcheck disable=SC2016,SC2086 # inner shell expands; cgroups are words
    setsid -f sh -c 'netns=$1 script=$2 board=$3 holder=$4
        shift 4
        for cg; do echo $$ >"$cg/cgroup.procs" || exit 1; done
        exec nsenter --net="$netns" unshare --mount --propagation private \
            --pid --fork --kill-child --ipc --uts --cgroup \
            "$script" jail-init "$board" ${holder:+"$holder"}
        ' sh "/var/run/netns/$NS" "$0" "$BOARD" "$HOLDER" $JAIL_CGROUPS \
        </dev/null >/dev/null 2>>"$JAIL_DIR/jail.log" 7>&- || fail "cannot start the jail of $BOARD"

    # Ready when sshd listens; failed when the jail, once started, is empty.
    _try=0
    _started=no
    until ss -N "$NS" -Hltn "sport = :$SSH_PORT" 2>/dev/null | grep -q .; do
        if jail_pids "$JAIL_CGROUPS" "" | grep -qvx "${HOLDER:-none}"; then
            _started=yes
        elif [ "$_started" = yes ] || [ "$_try" -ge 200 ]; then
            _said=$(tail -n 1 "$JAIL_DIR/jail.log")
            fail "the jail of $BOARD did not start: ${_said#"$PROG: "}"
        fi
        _try=$((_try + 1))
        sleep 0.1
    done
    if [ -n "$HOLDER" ]; then
        kill "$HOLDER"
        wait "$HOLDER" 2>/dev/null || true
    fi

    CLEAN_ON_FAILURE=no
    echo "ip=$_jail_ip"
    echo "ssh_port=$SSH_PORT"
    echo "ssh_user=$ACCOUNT"
    echo "ssh_hostkey=$_fingerprint"
    echo "net_admin=$NET_OWNED"
    if [ -n "$IFACE" ]; then
        echo "iface=$IFACE"
    fi
}

# --- Inside the jail --------------------------------------------------------

# Mounts of this namespace, "TYPE OPTIONS MOUNTPOINT" a line, the mount
# point unescaped.
mounts() {
    awk 'function unescape(s,  out, i) {
            out = ""
            while ((i = index(s, "\\")) > 0) {
                out = out substr(s, 1, i - 1) sprintf("%c", \
                    substr(s, i + 1, 1) * 64 + substr(s, i + 2, 1) * 8 + substr(s, i + 3, 1))
                s = substr(s, i + 4)
            }
            return out s
        }
        { for (i = 7; $i != "-"; i++) ; print $(i + 1), $6, unescape($5) }' /proc/self/mountinfo
}

# Run by reserve as the first process of the jail's PID namespace, in the
# jail's network namespace and fresh mount, IPC, UTS and cgroup namespaces,
# with standard error going to the jail's log.  Makes the host's file system
# read-only, gives the jail its own writable places, and becomes its sshd.
# When this process dies the kernel kills everything else in the jail.
# HOLDER ($1, if any) is a process in the user namespace owning the
# network namespace.
jail_init() {
    if [ -n "${1:-}" ]; then
        exec 8<"/proc/$1/ns/user"
    fi
    echo "$NS" >/proc/sys/kernel/hostname
    mount -t proc -o "nosuid,nodev,noexec,hidepid=$([ "$HIDE_PIDS" = yes ] && echo invisible || echo off)" \
        proc /proc || fail "cannot mount the jail's /proc"
    mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys || fail "cannot mount the jail's /sys"

    _hidden="/proc /sys /run /dev/pts /dev/mqueue $PRIVATE_DIRS"
    # Not a pipe: "fail" must end this shell, not a subshell.
    while read -r _type _opts _target; do
        # Network namespace handles of other jails would keep them alive.
        if [ "$_type" = nsfs ]; then
            umount -l "$_target" || fail "cannot unmount $_target"
            continue
        fi
        # Mounts the jail's own will hide need no change.
        for _dir in $_hidden; do
            case $_target/ in "$_dir"/*) continue 2 ;; esac
        done
        # Read-only, and set-user-ID programs and file capabilities give
        # nobody the host's privileges.
        case $_opts in
        ro,nosuid | ro,nosuid,*) ;;
        *)
            _flags=${_opts#r[ow]}
            case $_flags, in
            *,nosuid,*) ;;
            *) _flags=,nosuid$_flags ;;
            esac
            mount -o "remount,bind,ro$_flags" "$_target" ||
                fail "cannot make $_target read-only"
            ;;
        esac
    done <<EOF
$(mounts)
EOF

    mount -t tmpfs -o mode=0755,nosuid,nodev jail-run /run || fail "cannot mount the jail's /run"
    mkdir -m 0755 /run/sshd
    mkdir -m 1777 /run/lock
    if [ -n "${1:-}" ]; then
        mkdir -m 0755 /run/bitelab
        : >/run/bitelab/userns
        mount --bind /proc/self/fd/8 /run/bitelab/userns ||
            fail "cannot mount the user namespace of the jail's network"
        exec 8<&-
    fi
    for _dir in $PRIVATE_DIRS; do
        if [ -d "$_dir" ]; then
            mount -t tmpfs -o mode=1777,nosuid,nodev jail-tmp "$_dir" ||
                fail "cannot mount a private $_dir"
        fi
    done
    _tty=$(getent group tty | cut -d: -f3)
    mount -t devpts -o "newinstance,ptmxmode=0666,mode=0620${_tty:+,gid=$_tty}" devpts /dev/pts ||
        fail "cannot mount the jail's /dev/pts"
    mount --bind /dev/pts/ptmx /dev/ptmx || fail "cannot mount the jail's /dev/ptmx"
    if [ -d /dev/mqueue ]; then
        mount -t mqueue -o nosuid,nodev,noexec mqueue /dev/mqueue ||
            fail "cannot mount the jail's /dev/mqueue"
    fi
    _home=$HOME_BASE/$ACCOUNT
    mount --bind "$_home" "$_home" || fail "cannot mount $_home"
    mount -o remount,bind,rw,nosuid,nodev "$_home" || fail "cannot make $_home writable"

    exec prlimit --nproc="$([ "$PIDS_MAX" = max ] && echo unlimited || echo "$PIDS_MAX")" \
        "$SSHD" -D -e -f "$JAIL_DIR/sshd_config"
}

# --- Main -------------------------------------------------------------------

ACTION=${1:-}
BOARD=${2:-}
trap on_exit EXIT
trap on_signal INT TERM HUP

case $ACTION in
reserve | release | jail-init) ;;
*)
    ACTION=setup
    fail "usage: $0 reserve|release BOARD"
    ;;
esac
[ $# -eq 2 ] || [ "$ACTION.$#" = jail-init.3 ] || fail "usage: $0 reserve|release BOARD"
case $BOARD in
"" | *[!A-Za-z0-9._-]*) fail "bad board name '$BOARD': use letters, digits, '.', '_' and '-'" ;;
esac

NS=$PREFIX$BOARD
ACCOUNT=$NS
JAIL_DIR=$STATE_DIR/run/$NS
[ ${#ACCOUNT} -le 32 ] || fail "board name $BOARD is too long for an account name (32 characters with prefix $PREFIX)"

echo "$POOL" | grep -Eqx '([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}' ||
    fail "bad BITELAB_JAIL_POOL $POOL: want ADDRESS/LENGTH, e.g. 10.203.0.0/22"
_len=${POOL#*/}
if [ "$_len" -lt 8 ] || [ "$_len" -gt 30 ]; then
    fail "bad BITELAB_JAIL_POOL $POOL: the length must be 8 to 30"
fi
SLOTS=$((1 << (30 - _len)))
# The host end is the longer veth name: VETH_PREFIX, "h" and the last slot.
[ $((${#VETH_PREFIX} + 1 + ${#SLOTS})) -le 15 ] ||
    fail "BITELAB_JAIL_VETH_PREFIX $VETH_PREFIX is too long for interface names with $SLOTS slots"
UID_FIRST=${UIDS%%-*}
UID_LAST=${UIDS#*-}
if ! is_number "$UID_FIRST" || ! is_number "$UID_LAST" || [ "$UID_FIRST" -lt 1000 ] ||
    [ "$UID_FIRST" -gt "$UID_LAST" ] || [ "$UID_LAST" -ge 4294967295 ]; then
    fail "bad BITELAB_JAIL_UIDS $UIDS: want FIRST-LAST, e.g. 1900000000-1999999999"
fi
case /$CGROUP/ in
*[!A-Za-z0-9._/-]* | *//* | */../* | */./*) fail "bad BITELAB_JAIL_CGROUP $CGROUP: want a relative path, e.g. bitelab-jails" ;;
esac

case $ACTION in
reserve)
    # Output of the step being run; a fixed name in a root-only directory,
    # so a reserve killed outright leaves nothing that teardown does not
    # remove.
    ERRFILE=$STATE_DIR/run/$NS.err
    check_limits
    take_board
    reserve
    ;;
release)
    ERRFILE=$STATE_DIR/run/$NS.err
    take_board
    teardown 2>/dev/null || fail "$TEARDOWN_PROBLEM"
    ;;
jail-init) jail_init "${3:-}" ;;
esac
