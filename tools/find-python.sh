#!/usr/bin/env sh
# Print the path of a Python interpreter >= 3.12, or explain what to install.
# Order: $PYTHON, python3, python3.13, python3.12, then pyenv's installed versions.
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
for cand in "${PYTHON:-}" python3 python3.14 python3.13 python3.12; do
    [ -n "$cand" ] || continue
    if ok "$cand"; then command -v "$cand" 2>/dev/null || echo "$cand"; exit 0; fi
done
root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
for dir in $(ls -d "$root"/versions/3.1[2-9]* 2>/dev/null | sort -rV); do
    if ok "$dir/bin/python3"; then echo "$dir/bin/python3"; exit 0; fi
done
echo "numpyro_inflow needs Python >= 3.12 and none was found." >&2
echo "Install one (for example 'pyenv install 3.12' or your system's python3.12 package)," >&2
echo "or point PYTHON at it: make test PYTHON=/path/to/python3.12" >&2
exit 1
