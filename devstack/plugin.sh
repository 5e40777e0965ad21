#!/bin/bash
# devstack plugin for nova-dcmigrate: dispatch only; see lib/dcmigrate.
#
# Services: dcmigrate-agent (every compute node: driver, agent),
# dcmigrate-api (the controller: redirect REST API) and
# dcmigrate-scheduler (the controller: trait and weigher in the scheduler).

source "$DEST/nova-dcmigrate/devstack/lib/dcmigrate"

if is_service_enabled dcmigrate-agent dcmigrate-api dcmigrate-scheduler; then
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
