"""The example board file of bitelab's original description, verbatim."""

SEED = """\
setup_script = /ztank/prog/board_script;
classes {
cora-z7s = { arch = arm-armv7; }
pine64-a64-lts = { arch = arm64-aarch64; }
}
boards [
{
name = cora-1;
brdclass = cora-z7s;
options = [
{ cls = snmppower, host = poe, port = 2 },
]
},
{
name = a64lts-1;
brdclass = pine64-a64-lts;
options = [
{ cls = etheriface, val = awg0.103 },
{ cls = serialconsole, val = /dev/ttyU0 },
{ cls = snmppower, host = poe, port = 3 },
]
},
]
"""
