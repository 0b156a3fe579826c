#!/bin/sh
# bitelab setup script for FreeBSD: one vnet jail per reservation.
#
#   jail-freebsd.sh reserve BOARD
#   jail-freebsd.sh release BOARD
#
# Same contract as jail-linux.sh (see docs/jails.rst): reserve prints
#   ip=ADDRESS ssh_port=PORT ssh_user=NAME ssh_hostkey=FINGERPRINT [iface=NAME]
# and both actions are idempotent: release removes whatever a reserve or
# release killed at any point left, and succeeds when there is nothing;
# reserve first removes anything left of an earlier jail for the board.
#
# reserve builds, for BOARD:
#   - a root file system cloned from a ZFS snapshot of a template system,
#   - a vnet jail on it holding the board's interface (BITELAB_ETHERIFACE)
#     and one end of an epair whose other end, on the host, is addressed
#     from a /30 of the pool,
#   - an account inside the jail that logs in only with the key given at
#     reserve, and sshd inside the jail letting in that account only.
# The jail is its own system: the account sees the clone, not the host's
# files, and the clone is destroyed on release.
#
# Needs the template snapshot (a FreeBSD base with sshd, e.g. made with
# bsdinstall jail) and kernel support for vnet jails and epair (if_epair).

set -eu

# --- Site configuration (edit here, or export from a wrapper) --------------

STATE_DIR=${BITELAB_JAIL_STATE_DIR:-/var/db/bitelab/jails}
# Snapshot cloned for each jail, and the dataset the clones go under.
TEMPLATE=${BITELAB_JAIL_TEMPLATE:-ztank/jails/template@base}
DATASET=${BITELAB_JAIL_DATASET:-ztank/jails/run}
PREFIX=${BITELAB_JAIL_PREFIX:-bl_}
VETH_PREFIX=${BITELAB_JAIL_VETH_PREFIX:-blv}
POOL=${BITELAB_JAIL_POOL:-10.203.0.0/22}
SSH_PORT=${BITELAB_JAIL_SSH_PORT:-22}
IFACE_ADDR=${BITELAB_JAIL_IFACE_ADDR:-}

PROG=bitelab-jail
FAIL_MSG=
CLEAN_ON_FAILURE=no

fail() {
    FAIL_MSG=$*
    exit 1
}

on_exit() {
    _status=$?
    trap - EXIT INT TERM HUP
    if [ "$_status" -ne 0 ] && [ "$CLEAN_ON_FAILURE" = yes ]; then
        teardown >/dev/null 2>&1 ||
            FAIL_MSG="$FAIL_MSG; cleaning up failed too: $TEARDOWN_PROBLEM"
    fi
    if [ "$_status" -ne 0 ]; then
        echo "$PROG: ${FAIL_MSG:-$ACTION of $BOARD failed}" >&2
    fi
    exit "$_status"
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

jail_running() {
    jls -j "$JAIL" jid >/dev/null 2>&1
}

# A removed jail lingers, dying, until its last references go.
jail_dying() {
    jls -d -j "$JAIL" jid >/dev/null 2>&1
}

# Interfaces whose description marks them as this jail's: epairs are
# described when created, so one left by a reserve killed before renaming
# it is found too.
jail_ifaces() {
    ifconfig -a | awk -v mark="description: bitelab jail $JAIL" '
        /^[^ \t]/ { name = $1; sub(/:$/, "", name) }
        $0 ~ mark"$" { print name }'
}

# Slots are symlinks STATE_DIR/slots/N -> BOARD (ln -s is atomic).
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

board_slots() {
    for _link in "$STATE_DIR"/slots/*; do
        [ -L "$_link" ] || continue
        [ "$(readlink "$_link")" = "$BOARD" ] && basename "$_link"
    done
    return 0
}

# Everything of BOARD's jail that exists goes, whatever state a reserve or
# release left it in; vnet interfaces return to the host when the jail is
# removed.  Sets TEARDOWN_PROBLEM and fails if something stays.
teardown() {
    TEARDOWN_PROBLEM=
    _run=$STATE_DIR/run/$JAIL
    _iface=${BITELAB_ETHERIFACE:-}
    if [ -s "$_run/iface" ]; then
        read -r _iface <"$_run/iface"
    fi
    if jail_running; then
        if [ -n "$_iface" ]; then
            ifconfig "$_iface" -vnet "$JAIL" 2>/dev/null || true
        fi
        if ! jail -r "$JAIL"; then
            TEARDOWN_PROBLEM="cannot remove jail $JAIL; see jls"
            return 1
        fi
    fi
    _try=0
    while jail_dying && [ "$_try" -lt 100 ]; do
        _try=$((_try + 1))
        sleep 0.1
    done
    # The board's interface, if the jail had it, must be back.
    if [ -s "$_run/iface" ] && ! ifconfig "$_iface" >/dev/null 2>&1; then
        TEARDOWN_PROBLEM="interface $_iface of $BOARD did not come back from jail $JAIL; recreate it, then end the board's maintenance"
        return 1
    fi
    for _slot in $(board_slots); do
        ifconfig "${VETH_PREFIX}h$_slot" destroy 2>/dev/null || true
        rm -f "$STATE_DIR/slots/$_slot"
    done
    for _if in $(jail_ifaces); do
        ifconfig "$_if" destroy 2>/dev/null || true
    done
    if zfs list -H -o name "$DATASET/$JAIL" >/dev/null 2>&1; then
        # A jail killed while being made may have left its devfs mounted.
        _root=$(zfs get -H -o value mountpoint "$DATASET/$JAIL")
        if [ -d "$_root/dev" ]; then
            umount -f "$_root/dev" 2>/dev/null || true
        fi
        if ! zfs destroy -f "$DATASET/$JAIL"; then
            TEARDOWN_PROBLEM="cannot destroy $DATASET/$JAIL; see zfs list"
            return 1
        fi
    fi
    rm -rf "${_run:?}"
}

reserve() {
    mkdir -p "$STATE_DIR/slots" "$STATE_DIR/run"
    chmod 0700 "$STATE_DIR/slots"
    # The server only reserves a board nobody holds: leftovers are stale.
    teardown >/dev/null 2>&1 || fail "leftovers of an earlier jail for $BOARD: $TEARDOWN_PROBLEM"
    IFACE=${BITELAB_ETHERIFACE:-}
    if [ -n "$IFACE" ] && ! ifconfig "$IFACE" >/dev/null 2>&1; then
        fail "interface $IFACE of $BOARD not found on the host; check the board's etheriface"
    fi

    CLEAN_ON_FAILURE=yes
    mkdir -m 0700 "$STATE_DIR/run/$JAIL"
    if [ -n "$IFACE" ]; then
        # Release checks that the interface came back from the jail.
        echo "$IFACE" >"$STATE_DIR/run/$JAIL/iface"
    fi

    # One host key for all jails, so known_hosts survives address reuse.
    _hostkey=$STATE_DIR/ssh_host_ed25519_key
    if [ ! -e "$_hostkey" ]; then
        ssh-keygen -q -t ed25519 -N '' -C bitelab-jail -f "$_hostkey.$$" ||
            fail "cannot generate the jail host key"
        ln "$_hostkey.$$" "$_hostkey" 2>/dev/null || true
        rm -f "$_hostkey.$$" "$_hostkey.$$.pub"
    fi

    zfs clone "$TEMPLATE" "$DATASET/$JAIL" ||
        fail "cannot clone $TEMPLATE to $DATASET/$JAIL; check BITELAB_JAIL_TEMPLATE"
    _root=$(zfs get -H -o value mountpoint "$DATASET/$JAIL")

    claim_slot
    _net=$(ip_to_int "${POOL%/*}")
    _host_ip=$(int_to_ip $((_net + SLOT * 4 + 1)))
    _jail_ip=$(int_to_ip $((_net + SLOT * 4 + 2)))
    _epair=$(ifconfig epair create description "bitelab jail $JAIL") ||
        fail "cannot create an epair (kldload if_epair?)"
    _epair=${_epair%a}
    ifconfig "${_epair}b" description "bitelab jail $JAIL"
    ifconfig "${_epair}a" name "${VETH_PREFIX}h$SLOT" >/dev/null
    ifconfig "${VETH_PREFIX}h$SLOT" inet "$_host_ip/30" up

    # shellcheck disable=SC2046 # no word, or "vnet.interface=IFACE"
    jail -c name="$JAIL" path="$_root" host.hostname="$BOARD" persist \
        vnet vnet.interface="${_epair}b" \
        $([ -n "$IFACE" ] && echo "vnet.interface=$IFACE") \
        mount.devfs devfs_ruleset=4 allow.raw_sockets ||
        fail "cannot create jail $JAIL"

    jexec "$JAIL" ifconfig lo0 up
    jexec "$JAIL" ifconfig "${_epair}b" inet "$_jail_ip/30" up
    jexec "$JAIL" route -q add default "$_host_ip"
    if [ -n "$IFACE" ]; then
        jexec "$JAIL" ifconfig "$IFACE" up
        if [ -n "$IFACE_ADDR" ]; then
            jexec "$JAIL" ifconfig "$IFACE" inet "$IFACE_ADDR"
        fi
    fi

    # The account and its key live in the jail's own file system.
    jexec "$JAIL" pw useradd -n "$ACCOUNT" -m -s /bin/sh -w no \
        -c "bitelab jail $BOARD" || fail "cannot create account $ACCOUNT in $JAIL"
    mkdir -p "$_root/etc/ssh/authorized_keys"
    printf '%s\n' "${BITELAB_SSHPUBKEY:-}" >"$_root/etc/ssh/authorized_keys/$ACCOUNT"
    chmod 0644 "$_root/etc/ssh/authorized_keys/$ACCOUNT"
    install -m 0600 "$_hostkey" "$_root/etc/ssh/bitelab_host_key"

    cat >"$_root/etc/ssh/sshd_config.bitelab" <<EOF
# sshd of the bitelab jail for $BOARD; written by $0.
Port $SSH_PORT
HostKey /etc/ssh/bitelab_host_key
AuthorizedKeysFile /etc/ssh/authorized_keys/%u
AllowUsers $ACCOUNT
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
X11Forwarding no
Subsystem sftp internal-sftp
EOF
    jexec "$JAIL" /usr/sbin/sshd -f /etc/ssh/sshd_config.bitelab ||
        fail "cannot start sshd in $JAIL"

    CLEAN_ON_FAILURE=no
    echo "ip=$_jail_ip"
    echo "ssh_port=$SSH_PORT"
    echo "ssh_user=$ACCOUNT"
    echo "ssh_hostkey=$(ssh-keygen -l -f "$_hostkey" | awk '{ print $2 }')"
    if [ -n "$IFACE" ]; then
        echo "iface=$IFACE"
    fi
}

ACTION=${1:-}
BOARD=${2:-}
trap on_exit EXIT
trap 'FAIL_MSG="$ACTION of $BOARD interrupted (timed out?)"; exit 1' INT TERM HUP

case $ACTION in
reserve | release) ;;
*) fail "usage: $0 reserve|release BOARD" ;;
esac
[ $# -eq 2 ] || fail "usage: $0 reserve|release BOARD"
case $BOARD in
"" | *[!A-Za-z0-9._-]*) fail "bad board name '$BOARD': use letters, digits, '.', '_' and '-'" ;;
esac

# Jail names may not contain dots (they separate nested jails).
JAIL=$PREFIX$(echo "$BOARD" | tr . _)
ACCOUNT=$JAIL
[ ${#ACCOUNT} -le 32 ] || fail "board name $BOARD is too long for an account name"
echo "$POOL" | grep -Eqx '([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}' ||
    fail "bad BITELAB_JAIL_POOL $POOL: want ADDRESS/LENGTH, e.g. 10.203.0.0/22"
SLOTS=$((1 << (30 - ${POOL#*/})))

case $ACTION in
reserve) reserve ;;
release) teardown >/dev/null 2>&1 || fail "$TEARDOWN_PROBLEM" ;;
esac
