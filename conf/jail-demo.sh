#!/bin/sh
# Setup script of the jail demo (jail-demo.ucl): jail-linux.sh with names,
# state and addresses of the demo's own, so that it can run beside another
# lab on this machine.  The server passes the script only PATH and the
# BITELAB_* variables of the protocol, so the settings are made here.
BITELAB_JAIL_STATE_DIR=/var/lib/bitelab/jail-demo/state
BITELAB_JAIL_HOME_DIR=/var/lib/bitelab/jail-demo/homes
BITELAB_JAIL_PREFIX=jd-
BITELAB_JAIL_VETH_PREFIX=jdv
BITELAB_JAIL_POOL=10.203.64.0/24
BITELAB_JAIL_CGROUP=bitelab-jail-demo
BITELAB_JAIL_UIDS=1800000000-1800999999
export BITELAB_JAIL_STATE_DIR BITELAB_JAIL_HOME_DIR BITELAB_JAIL_PREFIX
export BITELAB_JAIL_VETH_PREFIX BITELAB_JAIL_POOL BITELAB_JAIL_CGROUP
export BITELAB_JAIL_UIDS
exec "$(dirname "$0")/jail-linux.sh" "$@"
