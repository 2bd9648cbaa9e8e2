#!/usr/bin/env bash
# Submit `qbr run --config CONFIG [ARGS...]` to a Ray cluster as a Ray job.
#
#   launch/submit.sh [--address URL] [--submission-id ID] [--no-wait] CONFIG [qbr run args...]
#
# The repository is uploaded as the job's working directory (launch/runtime_env.yaml lists what
# is left out), so the job runs the code of this checkout; the cluster's Python must already have
# the project's dependencies. The dashboard address comes from --address or RAY_API_SERVER_ADDRESS.
set -euo pipefail

USAGE="usage: launch/submit.sh [--address URL] [--submission-id ID] [--no-wait] CONFIG [qbr run args...]"

die() {
    echo "submit.sh: $*" >&2
    exit 2
}

repo_root() {
    cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd
}

# CONFIG as a path relative to the repository root: the job only sees the uploaded copy.
config_in_repo() {
    local config=$1 root=$2 absolute
    [[ -f $config ]] || die "config file not found: $config"
    absolute="$(cd "$(dirname "$config")" && pwd)/$(basename "$config")"
    [[ $absolute == "$root"/* ]] || die "config must be inside the repository ($root), the job gets only that: $config"
    echo "${absolute#"$root"/}"
}

main() {
    local address=${RAY_API_SERVER_ADDRESS:-} submission_id="" wait_flag=()
    while [[ $# -gt 0 ]]; do
        case $1 in
            --address) [[ $# -ge 2 ]] || die "--address needs a value"; address=$2; shift 2 ;;
            --address=*) address=${1#*=}; shift ;;
            --submission-id) [[ $# -ge 2 ]] || die "--submission-id needs a value"; submission_id=$2; shift 2 ;;
            --submission-id=*) submission_id=${1#*=}; shift ;;
            --no-wait) wait_flag=(--no-wait); shift ;;
            -h | --help) echo "$USAGE"; exit 0 ;;
            -*) die "unknown option $1 (options go before CONFIG; $USAGE)" ;;
            *) break ;;
        esac
    done
    [[ -n $address ]] || die "no Ray dashboard address: pass --address http://HOST:8265 or set RAY_API_SERVER_ADDRESS"
    [[ $# -ge 1 ]] || die "no CONFIG given; $USAGE"
    local root config
    root=$(repo_root)
    config=$(config_in_repo "$1" "$root")
    shift
    local stem
    stem=$(basename "$config" .toml)
    submission_id=${submission_id:-qbr-$stem-$(date -u +%Y%m%dT%H%M%SZ)}

    echo "submission id: $submission_id"
    echo "follow:        ray job logs --address $address --follow $submission_id"
    echo "status:        ray job status --address $address $submission_id"
    echo "stop:          ray job stop --address $address $submission_id"
    cd "$root"
    # Ray's job CLI lets RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, win over --address: the address chosen
    # here must be the one used, whatever a shell left in those variables.
    env -u RAY_ADDRESS RAY_API_SERVER_ADDRESS="$address" ray job submit --address "$address" --submission-id "$submission_id" \
        --working-dir . --runtime-env launch/runtime_env.yaml ${wait_flag[@]+"${wait_flag[@]}"} \
        -- python -m qbr_dist.cli run --config "$config" "$@"
}

main "$@"
