# tokend-env.sh: set OPENAI_API_KEY (and OPENAI_BASE_URL) from tokend's env file,
# without starting Python. POSIX sh; source it, do not run it:
#
#     . /path/to/tokend-env.sh            # profile "default"
#     TOKEND_PROFILE=work . tokend-env.sh # profile "work" (reads work.openai.env)
#
# Reads ${TOKEND_RUNTIME_DIR}/openai.env (KEY=VALUE lines, no quotes), which tokend
# rewrites atomically on every refresh. Returns 1 with a message on stderr when the file
# is missing or its token expires within TOKEND_MIN_VALID seconds (default 60, or a
# quarter of the token's lifetime, TOKEND_LIFETIME in the file, when that is shorter);
# the environment is left untouched then. Tokens are only ever assigned, never printed.
#
# The token is frozen into the environment: long-running programs should read the file
# (or use tokend.client) per request instead.

_tokend_env() {
    if [ -n "${TOKEND_RUNTIME_DIR:-}" ]; then
        _tokend_dir=$TOKEND_RUNTIME_DIR
    else
        # The daemon's default, by the same rule as tokend.paths.default_runtime_dir:
        # $XDG_RUNTIME_DIR if absolute; macOS ~/Library/Caches/TemporaryItems;
        # /run/user/$UID if it is our directory; else ${TMPDIR:-/tmp}/runtime-$UID.
        _tokend_uid=$(id -u)
        case ${XDG_RUNTIME_DIR:-} in
            /*) _tokend_base=$XDG_RUNTIME_DIR ;;
            *)
                if [ "$(uname -s)" = Darwin ]; then
                    _tokend_base=$HOME/Library/Caches/TemporaryItems
                elif [ -d "/run/user/$_tokend_uid" ] && [ -O "/run/user/$_tokend_uid" ]; then
                    _tokend_base=/run/user/$_tokend_uid
                else
                    case ${TMPDIR:-} in /*) _tokend_base=$TMPDIR ;; *) _tokend_base=/tmp ;; esac
                    _tokend_base=${_tokend_base%/}/runtime-$_tokend_uid
                fi
                ;;
        esac
        _tokend_dir=${_tokend_base%/}/tokend
    fi
    case ${TOKEND_PROFILE:-default} in
        default) _tokend_file=$_tokend_dir/openai.env ;;
        *) _tokend_file=$_tokend_dir/$TOKEND_PROFILE.openai.env ;;
    esac
    # A FIFO there would block the read below forever, a device would never end: only
    # a regular file is read (-f follows a symlink to what it names).
    _tokend_why=
    if [ ! -e "$_tokend_file" ]; then
        _tokend_why="no token file $_tokend_file; is tokend running? (systemctl --user start tokend, or tokend run; then tokend status)"
    elif [ ! -f "$_tokend_file" ]; then
        _tokend_why="$_tokend_file is not a regular file (tokend writes only regular files there); remove it, then systemctl --user restart tokend"
    elif [ ! -r "$_tokend_file" ]; then
        _tokend_why="cannot read $_tokend_file (permission denied): it is the daemon's, mode 0600; source this as the user tokend runs as"
    fi
    if [ -n "$_tokend_why" ]; then
        echo "tokend-env.sh: $_tokend_why" >&2
        unset _tokend_uid _tokend_dir _tokend_base _tokend_file _tokend_why
        return 1
    fi
    unset _tokend_why

    _tokend_key= _tokend_url= _tokend_exp= _tokend_life=
    # `|| [ -n ... ]` keeps a last line that lacks its newline.
    while IFS= read -r _tokend_line || [ -n "$_tokend_line" ]; do
        case $_tokend_line in
            OPENAI_API_KEY=*) _tokend_key=${_tokend_line#*=} ;;
            OPENAI_BASE_URL=*) _tokend_url=${_tokend_line#*=} ;;
            TOKEND_EXPIRES_AT=*) _tokend_exp=${_tokend_line#*=} ;;
            TOKEND_LIFETIME=*) _tokend_life=${_tokend_line#*=} ;;
        esac
    done < "$_tokend_file"

    _tokend_now=$(date +%s)
    _tokend_min=${TOKEND_MIN_VALID:-60}
    if [ -z "${TOKEND_MIN_VALID:-}" ]; then
        case $_tokend_life in
            '' | *[!0-9]*) ;;
            *) [ $((_tokend_life / 4)) -lt 60 ] && _tokend_min=$((_tokend_life / 4)) ;;
        esac
    fi
    _tokend_rc=0
    case $_tokend_exp in
        '' | *[!0-9]*)
            echo "tokend-env.sh: $_tokend_file has no valid TOKEND_EXPIRES_AT" >&2
            _tokend_rc=1
            ;;
        *)
            if [ -z "$_tokend_key" ]; then
                echo "tokend-env.sh: $_tokend_file holds no OPENAI_API_KEY" >&2
                _tokend_rc=1
            elif [ "$_tokend_exp" -le $((_tokend_now + _tokend_min)) ]; then
                echo "tokend-env.sh: the token in $_tokend_file expires in" \
                    "$((_tokend_exp - _tokend_now))s; is tokend running? (tokend status;" \
                    "if it cannot refresh: gcloud auth application-default login)" >&2
                _tokend_rc=1
            fi
            ;;
    esac
    if [ "$_tokend_rc" -eq 0 ]; then
        OPENAI_API_KEY=$_tokend_key
        TOKEND_EXPIRES_AT=$_tokend_exp
        export OPENAI_API_KEY TOKEND_EXPIRES_AT
        if [ -n "$_tokend_url" ]; then
            OPENAI_BASE_URL=$_tokend_url
            export OPENAI_BASE_URL
        fi
    fi
    unset _tokend_uid _tokend_dir _tokend_base _tokend_file _tokend_line _tokend_key \
        _tokend_url _tokend_exp _tokend_now _tokend_life _tokend_min
    return "$_tokend_rc"
}

if _tokend_env; then
    unset -f _tokend_env
    unset _tokend_rc
else
    unset -f _tokend_env
    unset _tokend_rc
    return 1
fi
