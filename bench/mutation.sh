#!/usr/bin/env bash
# Mutation testing of the method, judge, data and kernel-reference code (docs/mutation.md).
#
#   bench/mutation.sh                        every configured mutant (setup.cfg [mutmut])
#   bench/mutation.sh 'nanoalign.orpo.*'     one file's mutants: before a change to the ORPO loss
#   bench/mutation.sh 'kernels.odds_ratio.*' 'nanoalign.dpo.*'    several globs
#
# mutmut keeps its copy of the tree and every verdict in mutants/ (ignored by git). A later run
# re-tests only the functions whose code changed; `rm -rf mutants` starts afresh.
#   bench/mutation.sh --survivors            re-test the last run's survivors (after adding tests)
# Afterwards:
# `mutmut results` lists the survivors, `mutmut show NAME` prints one as a diff.
# The score printed at the end leaves out the mutants docs/mutation.md lists as equivalent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--survivors" ]; then
    # mutmut does not re-test a mutant whose function is unchanged, even when the tests changed:
    # after writing a test, re-test the survivors of the last run by name (the score covers all).
    mapfile -t run < <(python -c "
import glob, json
for f in sorted(glob.glob('mutants/**/*.meta', recursive=True)):
    for k, v in json.load(open(f))['exit_code_by_key'].items():
        if v == 0: print(k)")
    set --
else
    run=("$@")
fi
start=$(date +%s)
mutmut run --max-children "$(nproc)" "${run[@]}"
echo "wall clock: $(( $(date +%s) - start )) s on $(nproc) cores"
mutmut export-cicd-stats >/dev/null
python - "$@" <<'EOF'
import fnmatch, json, re, sys
from mutmut.mutation.data import SourceFileMutationData
from mutmut.stats import status_by_exit_code
from mutmut.utils.file_utils import walk_mutatable_files

globs = sys.argv[1:]
doc = open("docs/mutation.md").read()
equivalent = set(re.findall(r"^\| `([^`]+)` \| equivalent \|", doc, re.M))
counts, survivors = {}, []
for path in walk_mutatable_files():
    m = SourceFileMutationData(path=path)
    m.load()
    for name, code in m.exit_code_by_key.items():
        if globs and not any(fnmatch.fnmatch(name, g) for g in globs):
            continue
        status = status_by_exit_code[code]
        if status == "survived" and name in equivalent:
            status = "equivalent"
        counts[status] = counts.get(status, 0) + 1
        if status not in ("killed", "timeout", "equivalent"):
            survivors.append(f"{status}: {name}")
detected = counts.get("killed", 0) + counts.get("timeout", 0)
scored = sum(counts.values()) - counts.get("equivalent", 0)
print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())))
print(f"score: {detected}/{scored} = {100 * detected / max(scored, 1):.1f}% of the non-equivalent mutants "
      f"(killed + timeout)")
print("\n".join(survivors) or "no unexplained survivors")
EOF
