# `just fuzz [seconds]` (nightly; installs cargo-fuzz if missing). The
# committed seeds in fuzz/corpus/<target> are only read; what the fuzzer finds
# accumulates in fuzz/corpus-local/<target> (git-ignored), so repeated runs go
# deeper. A crash fails the recipe and leaves its input in
# fuzz/artifacts/<target>/: see fuzz/README.md. `just fuzz 600` is the
# 10-minute campaign of fuzz/README.md.
#
# Fuzz every cargo-fuzz target for `seconds` each
fuzz seconds="60":
    FUZZ_WORK_DIR=fuzz/corpus-local scripts/fuzz-smoke {{ seconds }}
