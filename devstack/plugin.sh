#!/bin/bash
# devstack plugin for nova-dcmigrate: dispatch only; see lib/dcmigrate.

source "$DEST/nova-dcmigrate/devstack/lib/dcmigrate"
DCMIGRATE_BIN_DIR=$(get_python_exec_prefix)

if is_service_enabled dcmigrate-agent; then
    if [[ "$1" == "stack" && "$2" == "install" ]]; then
        install_dcmigrate
    elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
        configure_dcmigrate
    elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
        start_dcmigrate
    elif [[ "$1" == "stack" && "$2" == "test-config" ]]; then
        configure_tempest_for_dcmigrate
    fi
    if [[ "$1" == "unstack" ]]; then
        stop_dcmigrate
    fi
fi
