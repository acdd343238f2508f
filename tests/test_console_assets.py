"""Every file the console's pages load ships in the package, listed with its licence and sha256."""

from __future__ import annotations

from appliance.console.assets import MANIFEST, digest, manifest, static_dir


def test_every_static_file_is_listed_with_its_source_licence_and_current_digest() -> None:
    directory = static_dir()
    listed = manifest(directory)
    on_disk = {p.name for p in directory.iterdir() if p.is_file() and p.name != MANIFEST}
    assert set(listed) == on_disk, "run: python -m appliance.console.assets --write"
    for name, asset in listed.items():
        assert asset.source and asset.version and asset.licence, name
        assert asset.sha256 == digest(directory / name), (
            f"{name} changed: run python -m appliance.console.assets --write")
