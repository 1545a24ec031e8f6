#!/usr/bin/env bash
# The default-model run sized to one 3-hour session of a 2-core CPU, from an empty work dir:
#   1. the two tuned teachers in parallel, one core each          (~20 min)
#   2. reinforce RSICD train + NWPU with both teachers, K=3      (~15-30 min)
#   3. the candidate and its plain-CLIP twin side by side          (~47 min for 1,800 steps at 128 px)
#   4. the full pipeline: evaluate, select, baseline (found), export through the ship gate, measure, card
# Every step resumes (re-run this script after an interruption). Usage:
#   RSCLIP_WORK_DIR=/path/to/work bash training/default_model/one_session.sh [CANDIDATE]
# CANDIDATE defaults to effnetlite0-mct-s-long-kd (the recipe of the shipped model).
# Logs: $RSCLIP_WORK_DIR/logs/{lite0,lite2,reinforce,candidate,twin,full}.log
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${RSCLIP_WORK_DIR:?set RSCLIP_WORK_DIR to the work dir (it holds teachers, reinforced data and runs)}"
candidate="${1:-effnetlite0-mct-s-long-kd}"
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

step "reinforce (log: $logs/reinforce.log)"
"$py" "$pipeline" --stages teachers,reinforce --reinforce-views 3 --reinforce-workers 2 > "$logs/reinforce.log" 2>&1

step "train $candidate and its plain twin (logs: $logs/candidate.log, twin.log)"
"$py" "$pipeline" --stages train --candidates "$candidate" > "$logs/candidate.log" 2>&1 &
run=$!
"$py" "$pipeline" --stages train --candidates "$candidate" --plain-twin > "$logs/twin.log" 2>&1 &
twin=$!
wait "$run" && wait "$twin"

step "evaluate, select, export through the ship gate, card (log: $logs/full.log)"
"$py" "$pipeline" --candidates "$candidate" > "$logs/full.log" 2>&1
step "done: training/results/students.md"
