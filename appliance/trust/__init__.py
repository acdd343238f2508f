"""Trust in a site's models through The Update Framework (TUF, python-tuf).

A site that runs its own model mirror signs it; a device trusts it only through
metadata that chains back to a root file pinned on the device.

- :mod:`.repository` and :mod:`.keys`: the site side (``appliance catalog``):
  a folder of signed metadata and targets that any web server can serve.
- :mod:`.client`: the device side (``appliance models pull | verify``): the
  catalog and every file it names are TUF targets, checked for length and hash.
- :mod:`.fetcher`: TUF's downloads over our own paced HTTP code.
- :mod:`.clock`: the newest time the device has seen, against a clock that
  restarts wrong at boot.
- :mod:`.refusal`: every refusal as one line naming the role and the reason.
- :mod:`.policy`: which catalog a device may use, and how ``doctor`` shows it.
"""

ONLINE_ROLES = ("targets", "snapshot", "timestamp")
"""The roles whose keys sign on the publishing machine; root's key stays offline."""
ROLES = ("root", *ONLINE_ROLES)
