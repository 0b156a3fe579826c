"""twistd plugin for bitelab; the service module is named, not imported."""

from twisted.application.service import ServiceMaker

bitelab = ServiceMaker(
    "bitelab",
    "bitelab.tap",
    "Remote board lab: reservations, power, jails and serial consoles",
    "bitelab",
)
