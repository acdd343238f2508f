# shellcheck shell=bash
# Sourced by install.sh and dev.sh.

# apt_install_missing PKG...: install the packages that are not installed yet (as root, or
# through sudo). Prints what it installs; does nothing when all are there.
apt_install_missing() {
    local missing=() pkg sudo=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ "${#missing[@]}" -gt 0 ] || return 0
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    printf '==> apt-get install %s\n' "${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
}
