# Sourced by the device_*.sh scripts on the GPU machine: Hydra's wheels (the machine has no
# package registry; carry `.whl`) into /tmp/site, and the checkout on PYTHONPATH.
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "error: installing .whl/*.whl failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
# gpu_tests <log name> <timeout s> <pytest arguments>: a gpu-tier run logged to $OUT/<log
# name>.log, its failures and totals printed.
gpu_tests() {  # gpu_tests <log name> <timeout s> <pytest arguments>
    timeout "$2" python3 -m pytest -m gpu -n 8 -q -rf -p no:cacheprovider "${@:3}" \
        > "$OUT/$1.log" 2>&1
    grep -E "FAILED|Error|[0-9]+ passed|[0-9]+ failed" "$OUT/$1.log" | tail -12
}
# bundle_csvs [name]: every CSV and PNG under $OUT (any depth) into $OUT/<name, csvs>.tgz,
# the originals removed (the device tool returns at most 8 files); nothing when there are none.
bundle_csvs() {
    local name=${1:-csvs}
    (cd "$OUT" && find . \( -name "*.csv" -o -name "*.png" \) -print0 > .bundle \
        && [ -s .bundle ] && tar --null -czf "$name.tgz" -T .bundle --remove-files; rm -f .bundle)
}
