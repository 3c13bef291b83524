# Recipes for the common jobs. Each calls a script under scripts/, so they
# also work without `just`.

# List the recipes
default:
    @just --list

# Run the server on the defaults (h2c on 127.0.0.1:50051)
serve *args:
    cargo run --release -- serve {{ args }}

# Run every test (sets up the Python and Node peers)
test *args:
    scripts/test {{ args }}

# What CI runs: fmt, clippy, tests, dependency audit, fuzz smoke
ci:
    .ci/run

# Build the stripped, statically linked binary (dist profile): the container's
# server-only one, or every command with `just dist --full`; prints its path last
dist *args:
    scripts/dist {{ args }}

# Size, cold start and idle RSS of the dist binary (the README's figures)
bench:
    scripts/bench-dist

# Size against throughput for each opt-level of the dist profile
bench-opt-levels *levels:
    scripts/bench-opt-levels {{ levels }}

# Our server against the article's (grpc-js) under the same load, side by side
bench-load:
    scripts/bench-load

# Our server against a plain tonic server of the same proto (bench/): a ratio
# table in markdown. `just bench-peer short` for a quick check, `sizes` for
# the static binaries only; ROUNDS=N to change the rounds (full: 3)
bench-peer mode="full":
    scripts/bench-peer {{ mode }}

# Development CA, server and client certificates into certs/dev/
certs:
    certs/gen.sh

# Check that every crate in the tree is listed in AUDIT.md
deps:
    scripts/check-deps

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
