#!/bin/bash
# Stand-ins for the few devstack helpers that devstack/lib/dcmigrate calls,
# so that the lab cloud runs the plugin's own functions (not a copy of
# them).  Each does what devstack's function of that name does, for one
# lab host; nothing else of devstack is emulated.
#
# Inputs (environment): CLOUD_VENV (the cloud's virtualenv),
# CLOUD_CONSTRAINTS (space-separated constraint files),
# CLOUD_TRANSPORT_URL, CLOUD_ENABLED_SERVICES (comma-separated),
# CLOUD_RUN_DIR (where run_process records its commands for the lab to
# start inside the host's namespaces), CLOUD_OS_CLOUD_ENV (an openrc).
set -euo pipefail

# devstack functions-common: iniset [-sudo] file section option value
function iniset {
    if [[ "$1" == "-sudo" ]]; then shift; fi
    local file=$1 section=$2 option=$3 value=$4
    [[ -z "$section" || -z "$option" ]] && return 0
    mkdir -p "$(dirname "$file")"
    touch "$file"
    crudini --set "$file" "$section" "$option" "$value"
}

# devstack lib/rpc_backend: iniset_rpc_backend project file [section]
function iniset_rpc_backend {
    local file=$2 section=${3:-DEFAULT}
    iniset "$file" "$section" transport_url "$CLOUD_TRANSPORT_URL"
}

# devstack functions-common: is_service_enabled service...
function is_service_enabled {
    local service
    for service in "$@"; do
        [[ ",$CLOUD_ENABLED_SERVICES," == *",$service,"* ]] && return 0
    done
    return 1
}

# devstack functions-common: install_package pkg...  The lab host's
# Debian packages come from tools/install-system-deps.sh (bindep.txt);
# here they are checked, not installed.
function install_package {
    local p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | \
                grep -q "install ok installed"; then
            echo "install_package: $p is missing" \
                 "(tools/install-system-deps.sh installs it)" >&2
            return 1
        fi
    done
}

# devstack inc/python: pip_install package...
function pip_install {
    local c args=()
    for c in $CLOUD_CONSTRAINTS; do args+=(-c "$c"); done
    "$CLOUD_VENV/bin/python" -m pip install -q "${args[@]}" "$@"
}

# devstack inc/python: the bin directory of the installed services.
function get_python_exec_prefix {
    echo "$CLOUD_VENV/bin"
}

# devstack functions-common: run_process service command.  The lab starts
# the recorded command itself, in the host's namespaces (lab/cloud).
function run_process {
    mkdir -p "$CLOUD_RUN_DIR"
    printf '%s\n' "$2" > "$CLOUD_RUN_DIR/$1.cmd"
}

function stop_process {
    rm -f "$CLOUD_RUN_DIR/$1.cmd"
}

# devstack lib/keystone: service and endpoint in the catalog.
function get_or_create_service {
    "$CLOUD_VENV/bin/python" -m nova_dcmigrate.lab.cloud.catalog \
        service "$1" "$2" "$3"
}

function get_or_create_endpoint {
    "$CLOUD_VENV/bin/python" -m nova_dcmigrate.lab.cloud.catalog \
        endpoint "$1" "$2" "$3"
}

function create_service_user {
    "$CLOUD_VENV/bin/python" -m nova_dcmigrate.lab.cloud.catalog \
        user "$1" "$SERVICE_PASSWORD" "${2:-service}"
}

# devstack lib/keystone: keystonemiddleware auth_token with a service user.
function configure_keystone_authtoken_middleware {
    local file=$1 user=$2 section=${3:-keystone_authtoken}
    iniset "$file" "$section" auth_type password
    iniset "$file" "$section" interface public
    iniset "$file" "$section" auth_url "$KEYSTONE_SERVICE_URI"
    iniset "$file" "$section" www_authenticate_uri "$KEYSTONE_SERVICE_URI"
    iniset "$file" "$section" username "$user"
    iniset "$file" "$section" password "$SERVICE_PASSWORD"
    iniset "$file" "$section" user_domain_name "$SERVICE_DOMAIN_NAME"
    iniset "$file" "$section" project_name "$SERVICE_PROJECT_NAME"
    iniset "$file" "$section" project_domain_name "$SERVICE_DOMAIN_NAME"
}
