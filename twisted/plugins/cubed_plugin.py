"""twistd plugin: ``twistd cubed``. Imports nothing heavy; cubed.service does the work."""
from twisted.application.service import ServiceMaker

cubed = ServiceMaker(
    "cubed",
    "cubed.service",
    "Cube's REST API (semantic layer) on Twisted",
    "cubed",
)
