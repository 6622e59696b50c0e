#!/usr/bin/env bash
# The container's entrypoint: one mode per job, each a thin layer over the project's CLI, plus the
# checks that make the sandbox's promises verifiable rather than trusted (see docker/README.md).
#
#   record NAME [ARGS]       three seeds into /records/NAME (python -m pgolf record)
#   reproduce [NAME] [ARGS]  eval-only from the artifacts of /records[/NAME] (python -m pgolf reproduce)
#   verify [NAME] [ARGS]     the rule checker on /records[/NAME] (python -m verify)
#   demo [ARGS]              the CPU demo (python -m pgolf demo)
#   help                     this text
#
# Mount points and knobs (env; the defaults are the container's):
#   PGOLF_DATA=/data             data root: datasets/<name>/fineweb_{train,val}_*.bin, tokenizers/*.model
#   PGOLF_RECORDS=/records       records root
#   PGOLF_WORK=/tmp/pgolf        writable scratch (reproduce's outputs; /out is used when mounted)
#   DATA_PATH, TOKENIZER_PATH    default PGOLF_DATA/datasets/fineweb10B_sp8192 and
#                                PGOLF_DATA/tokenizers/fineweb_8192_bpe.model
#   PGOLF_ALLOW_ROOT=1           run as uid 0 anyway
#   PGOLF_ALLOW_NETWORK=1        reproduce with a network interface present (warns, says so)
#   PGOLF_ALLOW_WRITABLE=1       reproduce with /data or the records folder writable (not :ro)
#   PGOLF_DRY_RUN=1              run every check, print the command, do not run it
#   PGOLF_SYS_NET=/sys/class/net where the network interfaces are listed
#   PGOLF_NET_PROBE=1.1.1.1:443  TCP probe, used only when PGOLF_SYS_NET cannot be read
#   PGOLF_DEV=/dev               where NVIDIA device nodes appear (docker run --gpus)
set -euo pipefail

PROG=${PGOLF_PROG:-entrypoint.sh}
PROJECT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
DATA=${PGOLF_DATA:-/data}
RECORDS=${PGOLF_RECORDS:-/records}
SYS_NET=${PGOLF_SYS_NET:-/sys/class/net}
DEV=${PGOLF_DEV:-/dev}
NET_PROBE=${PGOLF_NET_PROBE:-1.1.1.1:443}

usage() {
    cat <<EOF
usage: $PROG MODE [ARGS...]

modes:
  record NAME [ARGS]       three seeds (default 42 314 999) into $RECORDS/NAME, then submission.json
                           (python -m pgolf record --out $RECORDS/NAME ARGS; e.g. --seeds 1 2 3,
                           --nproc 8, --author ..., --env K=V). Mount the data read-only at $DATA
                           and the records root read-write at $RECORDS.
  reproduce [NAME] [ARGS]  eval-only from each saved artifact of $RECORDS/NAME (or $RECORDS),
                           val_bpb compared with the logs (python -m pgolf reproduce). Refuses to run
                           unless: no network (docker run --network none), no training shards under
                           $DATA (mount only fineweb_val_*.bin and the tokenizer), and $DATA and the
                           records folder read-only (:ro). Outputs go to /out when mounted.
  verify [NAME] [ARGS]     the rule checker on $RECORDS/NAME (or $RECORDS) (python -m verify)
  demo [ARGS]              the CPU demo: data from stdlib text, 3 tiny seeds, verify
                           (python -m pgolf demo; work folder $RECORDS/demo when $RECORDS is writable)
  help                     this text

Runs as a non-root user (PGOLF_ALLOW_ROOT=1 overrides). PGOLF_DRY_RUN=1 prints the command only.
EOF
}

die() { echo "$PROG: error: $*" >&2; exit "${2:-1}"; }
warn() { echo "$PROG: warning: $*" >&2; }

# true when "$1" is among the remaining arguments (an option the user already gave)
has_opt() {
    local want=$1 a
    shift
    for a in "$@"; do
        [[ $a == "$want" || $a == "$want="* ]] && return 0
    done
    return 1
}

check_name() {
    local name=$1
    [[ -n $name && $name != -* ]] || die "$2 needs a folder NAME under $RECORDS first (e.g. $2 2026-05-01_my_run)" 2
    [[ $name =~ ^[A-Za-z0-9._+-]+$ && $name != . && $name != .. ]] \
        || die "NAME '$name': use one folder name (letters, digits, . _ + -), not a path" 2
}

# Network interfaces other than loopback; with `--network none` there are none.
network_interfaces() {
    local dev names=()
    for dev in "$SYS_NET"/*; do
        [[ -e $dev ]] || continue
        [[ $(basename "$dev") == lo ]] || names+=("$(basename "$dev")")
    done
    echo "${names[*]:-}"
}

# 0 when a TCP connect to NET_PROBE reaches a host (accepted or refused), 1 when the network is
# unreachable or the probe times out (1 s). Only used where the interface list is unreadable.
probe_reaches() {
    "$PY" - "$NET_PROBE" <<'EOF'
import socket, sys
host, _, port = sys.argv[1].rpartition(":")
try:
    socket.create_connection((host, int(port)), timeout=1).close()
except ConnectionRefusedError:
    sys.exit(0)  # something answered: the network is there
except OSError:
    sys.exit(1)
sys.exit(0)
EOF
}

check_no_network() {
    local found why=""
    if [[ -d $SYS_NET ]]; then
        found=$(network_interfaces)
        [[ -z $found ]] || why="network interface(s) present: $found"
    elif probe_reaches; then
        why="$SYS_NET unreadable and a TCP connect to $NET_PROBE got an answer"
    fi
    [[ -z $why ]] && return 0
    if [[ ${PGOLF_ALLOW_NETWORK:-0} == 1 ]]; then
        warn "$why; continuing because PGOLF_ALLOW_NETWORK=1: this run does NOT prove evaluation without network"
        return 0
    fi
    die "reproduce must run without network ($why): add --network none to docker run (PGOLF_ALLOW_NETWORK=1 overrides)"
}

check_no_training_data() {
    [[ -d $DATA ]] || die "$DATA: not mounted; mount the val shards and tokenizer read-only, e.g. -v \$PWD/data/tokenizers:$DATA/tokenizers:ro"
    local bad
    bad=$(find "$DATA" \( -type f -o -type l \) -name '*.bin' ! -name '*_val_*.bin' -print 2>/dev/null | head -n 3)
    [[ -z $bad ]] || die "training data visible to the evaluation: $(echo "$bad" | tr '\n' ' ')- mount only fineweb_val_*.bin and the tokenizer under $DATA"
}

check_read_only() {
    local d
    for d in "$@"; do
        if [[ -w $d ]]; then
            if [[ ${PGOLF_ALLOW_WRITABLE:-0} == 1 ]]; then
                warn "$d is writable; continuing because PGOLF_ALLOW_WRITABLE=1"
            else
                die "$d is writable: mount it read-only (:ro) for reproduce (PGOLF_ALLOW_WRITABLE=1 overrides)"
            fi
        fi
    done
}

# The preset a record run will use: the last PRESET=... among the arguments (pgolf's --env), else
# the environment's; empty means the trainer's default (a GPU preset).
record_preset() {
    local a preset=${PRESET:-}
    for a in "$@"; do
        case $a in
            PRESET=* | --env=PRESET=*) preset=${a#*PRESET=} ;;
        esac
    done
    echo "$preset"
}

# GPU presets need NVIDIA GPUs, which a container sees only with `docker run --gpus`: refuse early,
# before anything is written, with the flag to add.
check_gpu_for_record() {
    local preset
    preset=$(record_preset "$@")
    [[ $preset == tiny ]] && return 0
    has_opt --no-gpu-check "$@" && return 0
    compgen -G "$DEV/nvidia[0-9]*" >/dev/null && return 0
    die "record with PRESET=${preset:-(default)} needs NVIDIA GPUs and the container sees none: add --gpus all --ipc=host to docker run (or -e PRESET=tiny for a CPU run)"
}

# Every run here is one node (torchrun --standalone): its rendezvous and workers meet on loopback.
# torchrun otherwise advertises the container's hostname, which resolves nowhere under
# --network none (workers then wait 300 s and fail); PET_LOCAL_ADDR is torchrun's --local-addr.
# Without any interface but lo, NCCL's and gloo's bootstrap must use lo (they skip it by default).
single_node_env() {
    export PET_LOCAL_ADDR=${PET_LOCAL_ADDR:-127.0.0.1}
    if [[ -d $SYS_NET && -z $(network_interfaces) ]]; then
        export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-lo} GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-lo}
    fi
}

writable_dir() {
    mkdir -p "$1" 2>/dev/null && [[ -w $1 ]]
}

# Every check has passed when this runs: only now is anything written (HOME).
run() {
    if [[ ${PGOLF_DRY_RUN:-0} == 1 ]]; then
        printf 'dry run:'
        printf ' %q' "$@"
        printf '\n'
        exit 0
    fi
    # caches (torch, triton, matplotlib) need a writable HOME; the image's is under /tmp (created
    # here, for whichever --user), so a run writes nowhere but the mounts and /tmp
    mkdir -p "${HOME:-/nonexistent}" 2>/dev/null || true
    if [[ -z ${HOME:-} || ! -w ${HOME:-/nonexistent} ]]; then
        HOME=$(mktemp -d "${TMPDIR:-/tmp}/pgolf-home.XXXXXX")
        export HOME
    fi
    exec "$@"
}

main() {
    local mode=${1:-help}
    [[ $# -gt 0 ]] && shift
    case $mode in
        help | -h | --help) usage; exit 0 ;;
        record | reproduce | verify | demo) ;;
        *) echo "$PROG: error: unknown mode '$mode'" >&2; usage >&2; exit 2 ;;
    esac

    if [[ $(id -u) == 0 && ${PGOLF_ALLOW_ROOT:-0} != 1 ]]; then
        die "refusing to run as root (uid 0); the image's user is pgolf, or pass --user \"\$(id -u):\$(id -g)\" (PGOLF_ALLOW_ROOT=1 overrides)"
    fi
    single_node_env
    export DATA_PATH=${DATA_PATH:-$DATA/datasets/fineweb10B_sp8192}
    export TOKENIZER_PATH=${TOKENIZER_PATH:-$DATA/tokenizers/fineweb_8192_bpe.model}
    cd "$PROJECT"

    case $mode in
        record)
            check_name "${1:-}" record
            local name=$1
            shift
            [[ -d $RECORDS ]] || die "$RECORDS: not mounted; add -v \$PWD/records:$RECORDS"
            [[ -w $RECORDS ]] || die "$RECORDS: not writable by uid $(id -u); mount it read-write, and pass --user \"\$(id -u):\$(id -g)\" to write as yourself"
            [[ -d $DATA ]] || die "$DATA: not mounted; add -v \$PWD/data:$DATA:ro"
            check_gpu_for_record "$@"
            if [[ -w $DATA ]]; then warn "$DATA is writable; mount it read-only (:ro)"; fi
            run "$PY" -m pgolf record --out "$RECORDS/$name" "$@"
            ;;
        reproduce)
            local folder=$RECORDS
            if [[ $# -gt 0 && $1 != -* ]]; then
                check_name "$1" reproduce
                folder=$RECORDS/$1
                shift
            fi
            [[ -d $folder ]] || die "$folder: no such records folder; mount it read-only at $RECORDS"
            check_no_network
            check_no_training_data
            check_read_only "$DATA" "$folder"
            # pgolf keeps its outputs next to the folder (.NAME.pgolf/): reach the read-only folder
            # through a link in a writable place so they land there
            local work=${PGOLF_WORK:-}
            if [[ -z $work ]]; then
                if [[ -d /out ]] && writable_dir /out; then work=/out; else work=/tmp/pgolf; fi
            fi
            writable_dir "$work" || die "$work: cannot create or write the work folder (PGOLF_WORK)"
            local link
            link="$work/$(basename "$folder")"
            ln -sfn "$(cd "$folder" && pwd)" "$link"
            local extra=()
            has_opt --data-path "$@" || extra+=(--data-path "$DATA_PATH")
            has_opt --tokenizer-path "$@" || extra+=(--tokenizer-path "$TOKENIZER_PATH")
            echo "$PROG: reproduce: no network, no training shards under $DATA, inputs read-only; outputs in $work"
            run "$PY" -m pgolf reproduce "$link" "${extra[@]}" "$@"
            ;;
        verify)
            local target=$RECORDS
            if [[ $# -gt 0 && $1 != -* ]]; then
                check_name "$1" verify
                target=$RECORDS/$1
                shift
            fi
            [[ -d $target ]] || die "$target: no such records folder; mount it at $RECORDS (read-only is enough)"
            run "$PY" -m verify "$target" "$@"
            ;;
        demo)
            local extra=()
            if ! has_opt --work "$@"; then
                if [[ -d $RECORDS ]] && writable_dir "$RECORDS/demo"; then
                    extra+=(--work "$RECORDS/demo")
                else
                    extra+=(--work "${PGOLF_WORK:-/tmp/pgolf}/demo")
                    warn "$RECORDS not mounted writable: the demo's outputs stay inside the container (${PGOLF_WORK:-/tmp/pgolf}/demo)"
                fi
            fi
            run "$PY" -m pgolf demo "${extra[@]}" "$@"
            ;;
    esac
}

main "$@"
