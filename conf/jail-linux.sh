#!/bin/sh
# bitelab setup script for Linux: one network-namespace jail per reservation.
#
#   jail-linux.sh reserve BOARD
#   jail-linux.sh release BOARD
#
# The bitelab server runs this with BITELAB_BOARD, BITELAB_USER,
# BITELAB_SSHPUBKEY and, when the board has one, BITELAB_ETHERIFACE in the
# environment (see docs/jails.rst for the whole protocol).
#
# reserve builds the jail for BOARD:
#   - a network namespace PREFIX+BOARD holding the board's interface,
#   - a veth pair linking it to the host, addressed from a /30 of the pool,
#   - an unprivileged account PREFIX+BOARD that may log in only with the key
#     given at reserve,
#   - an OpenSSH server inside the namespace that lets in that account only,
# and prints, one per line:
#   ip=ADDRESS ssh_port=PORT ssh_user=NAME ssh_hostkey=FINGERPRINT [iface=NAME]
#
# release takes it all down again and hands the interface back to the host.
# It is idempotent: it cleans up after a reserve that failed half-way or was
# killed, and succeeds when there is nothing left to do.
#
# The account shares the host's file system, with its own /tmp, /var/tmp
# and /dev/shm and a /proc that only shows its own processes; it cannot
# change the network (no capabilities), but may bind any port in its
# namespace.  See docs/jails.rst for what the user can and cannot do.
#
# Needs: iproute2, openssh-server, openssh-client (ssh-keygen), passwd
# (useradd/userdel), procps (pkill).

set -eu

# The server passes its own PATH, which may lack the admin tools.
PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
export PATH

# --- Site configuration ----------------------------------------------------
# Edit the defaults here, or point setup_script at a wrapper that exports
# BITELAB_JAIL_* and execs this script: the server passes only PATH and the
# BITELAB_* variables of the protocol.

# Root-only state: the shared host key, per-jail sshd files, address slots.
STATE_DIR=${BITELAB_JAIL_STATE_DIR:-/var/lib/bitelab/jails}
# Home directories of the jail accounts are made (and removed) under here.
HOME_BASE=${BITELAB_JAIL_HOME_DIR:-/var/lib/bitelab/homes}
# Namespace and account name: PREFIX + board name (accounts: 32 chars max).
PREFIX=${BITELAB_JAIL_PREFIX:-bl-}
# veth names: VETH_PREFIX + h|j + slot (host and jail end; 15 chars max).
VETH_PREFIX=${BITELAB_JAIL_VETH_PREFIX:-blv}
# Each jail gets one /30 of this pool: .1 on the host, .2 in the jail.
POOL=${BITELAB_JAIL_POOL:-10.203.0.0/22}
SSH_PORT=${BITELAB_JAIL_SSH_PORT:-22}
SSHD=${BITELAB_JAIL_SSHD:-/usr/sbin/sshd}
USER_SHELL=${BITELAB_JAIL_SHELL:-/bin/bash}
# Optional address (CIDR) put on the board's interface inside the jail: the
# account cannot configure addresses itself.
IFACE_ADDR=${BITELAB_JAIL_IFACE_ADDR:-}
# Directories replaced by a fresh tmpfs for the jail; set empty to share the
# host's.  STATE_DIR and HOME_BASE must not lie below any of them.
PRIVATE_DIRS=${BITELAB_JAIL_PRIVATE_DIRS-/tmp /var/tmp /dev/shm}
# "yes": the jail's /proc shows only the account's own processes.
HIDE_PIDS=${BITELAB_JAIL_HIDE_PIDS:-yes}

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

# --- Teardown (release, and cleanup of a failed reserve) -------------------

# Take down everything of BOARD's jail that exists.  Keeps the namespace (and
# fails) if the board's interface cannot be moved back, since deleting the
# namespace would destroy a VLAN interface inside it.
teardown() {
    TEARDOWN_PROBLEM=

    if netns_exists; then
        # Every process in the namespace: sshd, its sessions, the user's jobs.
        for _try in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
            _pids=$(ip netns pids "$NS" 2>/dev/null) || break
            [ -z "$_pids" ] && break
            # shellcheck disable=SC2086 # one argument per pid
            kill -KILL $_pids 2>/dev/null || true
            sleep 0.1
        done
    fi
    # Anything the account left running outside the namespace.
    if our_account; then
        pkill -KILL -u "$ACCOUNT" 2>/dev/null || true
    fi

    if netns_exists; then
        # Hand back every interface but lo and our veth end (which goes with
        # the namespace).
        for _dev in $(ip -n "$NS" -o link show | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }'); do
            case $_dev in
            lo | "${VETH_PREFIX}"j[0-9]*) continue ;;
            esac
            if ip -n "$NS" link set dev "$_dev" netns $$ 2>/dev/null; then
                if grep -qxF "$_dev" "$JAIL_DIR/iface_was_up" 2>/dev/null; then
                    ip link set dev "$_dev" up 2>/dev/null || true
                fi
            else
                TEARDOWN_PROBLEM="cannot move interface $_dev back to the host; left in namespace $NS"
            fi
        done
    fi

    for _slot in $(board_slots); do
        ip link del "${VETH_PREFIX}h$_slot" 2>/dev/null || true
        rm -f "$STATE_DIR/slots/$_slot"
    done

    if [ -z "$TEARDOWN_PROBLEM" ] && netns_exists; then
        ip netns del "$NS" 2>/dev/null || TEARDOWN_PROBLEM="cannot delete namespace $NS"
    fi

    if our_account; then
        userdel -r "$ACCOUNT" >/dev/null 2>&1 || true
        our_account && TEARDOWN_PROBLEM="cannot remove account $ACCOUNT"
    fi
    if ! getent passwd "$ACCOUNT" >/dev/null; then
        rm -rf "${HOME_BASE:?}/${ACCOUNT:?}"
    fi

    [ -n "$TEARDOWN_PROBLEM" ] && return 1
    rm -rf "${JAIL_DIR:?}"
    rm -f "$ERRFILE"
}

# --- Reserve ----------------------------------------------------------------

reserve() {
    SSHPUBKEY=${BITELAB_SSHPUBKEY:-}
    IFACE=${BITELAB_ETHERIFACE:-}

    for _dir in $PRIVATE_DIRS; do
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

    run "create namespace $NS" ip netns add "$NS"
    run "bring up lo in $NS" ip -n "$NS" link set lo up

    run "create veth $_veth_host" ip link add "$_veth_host" type veth peer name "$_veth_jail"
    run "move $_veth_jail into $NS" ip link set "$_veth_jail" netns "$NS"
    run "address $_veth_host" ip addr add "$_host_ip/30" dev "$_veth_host"
    run "bring up $_veth_host" ip link set "$_veth_host" up
    run "address $_veth_jail" ip -n "$NS" addr add "$_jail_ip/30" dev "$_veth_jail"
    run "bring up $_veth_jail" ip -n "$NS" link set "$_veth_jail" up
    run "route $NS to the host" ip -n "$NS" route add default via "$_host_ip"

    if [ -n "$IFACE" ]; then
        if ip -o link show dev "$IFACE" | grep -q '[<,]UP[,>]'; then
            echo "$IFACE" >"$JAIL_DIR/iface_was_up"
        fi
        run "move interface $IFACE into $NS" ip link set dev "$IFACE" netns "$NS"
        run "bring up $IFACE in $NS" ip -n "$NS" link set dev "$IFACE" up
        if [ -n "$IFACE_ADDR" ]; then
            run "address $IFACE with $IFACE_ADDR" ip -n "$NS" addr add "$IFACE_ADDR" dev "$IFACE"
        fi
    fi

    run "create account $ACCOUNT" useradd --create-home --home-dir "$HOME_BASE/$ACCOUNT" \
        --user-group --shell "$USER_SHELL" --password '*' \
        --comment "bitelab jail $BOARD" "$ACCOUNT"
    chmod 0700 "$HOME_BASE/$ACCOUNT"
    _gid=$(id -g "$ACCOUNT")

    # The namespace is the account's alone: let it use low ports (TFTP, DHCP,
    # HTTP servers for the board) and ping, which need no other privilege.
    run "allow low ports in $NS" ip netns exec "$NS" \
        sysctl -qw net.ipv4.ip_unprivileged_port_start=0
    run "allow ping in $NS" ip netns exec "$NS" \
        sysctl -qw net.ipv4.ping_group_range="$_gid $_gid"

    # The account reads its keys (sshd opens them as the user), but neither
    # it nor other jails' accounts may change them.
    chgrp "$_gid" "$JAIL_DIR" "$JAIL_DIR/authorized_keys"
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
PidFile $JAIL_DIR/sshd.pid
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
LogLevel VERBOSE
Subsystem sftp internal-sftp
EOF
    # Debian's sshd insists on its privilege separation directory, which only
    # exists while the host's own sshd service runs.
    [ -d /run/sshd ] || mkdir -m 0755 /run/sshd
    run "check the jail's sshd configuration" "$SSHD" -t -f "$JAIL_DIR/sshd_config"

    # sshd starts in the private mount namespace "ip netns exec" makes;
    # the mounts below are seen by it and the sessions it starts only.
    # shellcheck disable=SC2016,SC2086 # inner shell expands; dirs are words
    run "start sshd in $NS" ip netns exec "$NS" sh -c '
        set -e
        sshd=$1 conf=$2 log=$3 hide=$4
        shift 4
        for dir in "$@"; do
            if [ -d "$dir" ]; then
                mount -t tmpfs -o mode=1777,nosuid,nodev jail-tmp "$dir"
            fi
        done
        if [ "$hide" = yes ]; then
            mount -t proc -o hidepid=invisible proc /proc
        fi
        exec "$sshd" -f "$conf" -E "$log" </dev/null >/dev/null 2>&1
    ' sh "$SSHD" "$JAIL_DIR/sshd_config" "$JAIL_DIR/sshd.log" "$HIDE_PIDS" $PRIVATE_DIRS

    # sshd writes its PID file just after going to the background.
    for _try in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
        [ -s "$JAIL_DIR/sshd.pid" ] && break
        sleep 0.1
    done
    [ -s "$JAIL_DIR/sshd.pid" ] || fail "sshd in $NS did not start; see $JAIL_DIR/sshd.log"

    CLEAN_ON_FAILURE=no
    echo "ip=$_jail_ip"
    echo "ssh_port=$SSH_PORT"
    echo "ssh_user=$ACCOUNT"
    echo "ssh_hostkey=$_fingerprint"
    if [ -n "$IFACE" ]; then
        echo "iface=$IFACE"
    fi
}

# --- Main -------------------------------------------------------------------

ACTION=${1:-}
BOARD=${2:-}
trap on_exit EXIT
trap on_signal INT TERM HUP

case $ACTION in
reserve | release) ;;
*)
    ACTION=setup
    fail "usage: $0 reserve|release BOARD"
    ;;
esac
[ $# -eq 2 ] || fail "usage: $0 reserve|release BOARD"
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

# Output of the step being run; a fixed name in a root-only directory, so a
# reserve killed outright leaves nothing that teardown does not remove.
ERRFILE=$STATE_DIR/run/$NS.err
case $ACTION in
reserve) reserve ;;
release) teardown 2>/dev/null || fail "$TEARDOWN_PROBLEM" ;;
esac
