#!/usr/bin/env bash
# Evaluate every released DFormer / DFormerv2 checkpoint with the papers' protocol and
# compare with the published mIoU.
#
#   bash tools/reproduce_dformer_scores.sh
#
# Protocol: 5 scales (0.5..1.5) + flip + sliding window (tools/test.py --tta --sliding);
# SUN RGB-D DFormerv2 models padded to 531x730 in RGB order (their configs say so).
# Environment:
#   DFORMER_ROOT  folder holding checkpoints/trained/ and datasets/ (default: the repository)
#   PYTHON_BIN    interpreter (default: the project's .venv, else python3)
#   GPUS          processes; >1 runs each evaluation under `mpirun -np $GPUS` (default 1)
#   MODEL_FILTER  only configs whose file name contains this text (default: all 14)
#   OUT_DIR       where the table and the logs go (default: $DFORMER_ROOT/work_dirs/reproduce_dformer_scores)
#   EXTRA_ARGS    more tools/test.py arguments (e.g. "--max-iters 10" for a dry run)
# Writes $OUT_DIR/scores.csv and $OUT_DIR/scores.md: config, checkpoint, published mIoU,
# ours, delta, status. A missing checkpoint or dataset is a row with that status, never a
# failure of the script; a failed evaluation is a row "failed (see <log>)".
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
source utils/common.sh
PY=${PYTHON_BIN:-$PY}
DFORMER_ROOT=$(cd "${DFORMER_ROOT:-$REPO}" 2>/dev/null && pwd || echo "${DFORMER_ROOT:-$REPO}")
GPUS=${GPUS:-1}
MODEL_FILTER=${MODEL_FILTER:-}
OUT_DIR=${OUT_DIR:-$DFORMER_ROOT/work_dirs/reproduce_dformer_scores}
mkdir -p "$OUT_DIR"
ROWS="$OUT_DIR/rows.tsv"
: > "$ROWS"

# config file | dataset folder | published mIoU | checkpoint names tried (first found wins)
EXPERIMENTS=(
  "dformer_tiny_8xb8-500e_nyudepthv2-480x640.py|NYUDepthv2|51.8|NYUv2_DFormer_Tiny.pth NYUDepthv2_DFormer_Tiny.pth"
  "dformer_small_8xb8-500e_nyudepthv2-480x640.py|NYUDepthv2|53.6|NYUv2_DFormer_Small.pth NYUDepthv2_DFormer_Small.pth"
  "dformer_base_8xb8-500e_nyudepthv2-480x640.py|NYUDepthv2|55.6|NYUv2_DFormer_Base.pth NYUDepthv2_DFormer_Base.pth"
  "dformer_large_8xb8-500e_nyudepthv2-480x640.py|NYUDepthv2|57.2|NYUv2_DFormer_Large.pth NYUDepthv2_DFormer_Large.pth"
  "dformerv2_s_8xb16-500e_nyudepthv2-480x640.py|NYUDepthv2|56.0|DFormerv2_Small_NYU.pth NYUv2_DFormerv2_S.pth NYUDepthv2_DFormerv2_S.pth"
  "dformerv2_b_8xb8-500e_nyudepthv2-480x640.py|NYUDepthv2|57.7|DFormerv2_Base_NYU.pth NYUv2_DFormerv2_B.pth NYUDepthv2_DFormerv2_B.pth"
  "dformerv2_l_8xb12-500e_nyudepthv2-480x640.py|NYUDepthv2|58.4|DFormerv2_Large_NYU.pth NYUv2_DFormerv2_L.pth NYUDepthv2_DFormerv2_L.pth"
  "dformer_tiny_8xb16-300e_sunrgbd-480x480.py|SUNRGBD|48.8|SUNRGBD_DFormer_Tiny.pth"
  "dformer_small_8xb16-300e_sunrgbd-480x480.py|SUNRGBD|50.0|SUNRGBD_DFormer_Small.pth"
  "dformer_base_8xb16-300e_sunrgbd-480x480.py|SUNRGBD|51.2|SUNRGBD_DFormer_Base.pth"
  "dformer_large_8xb16-300e_sunrgbd-480x480.py|SUNRGBD|52.5|SUNRGBD_DFormer_Large.pth"
  "dformerv2_s_8xb16-300e_sunrgbd-480x480.py|SUNRGBD|51.5|DFormerv2_Small_SUNRGBD.pth DFormerv2_Small_SUN.pth SUNRGBD_DFormerv2_S.pth"
  "dformerv2_b_8xb16-300e_sunrgbd-480x480.py|SUNRGBD|52.8|DFormerv2_Base_SUNRGBD.pth DFormerv2_Base_SUN.pth SUNRGBD_DFormerv2_B.pth"
  "dformerv2_l_8xb16-300e_sunrgbd-480x480.py|SUNRGBD|53.3|DFormerv2_Large_SUNRGBD.pth DFormerv2_Large_SUN.pth SUNRGBD_DFormerv2_L.pth"
)

launch=()
if [ "$GPUS" -gt 1 ]; then
  launch=(mpirun -np "$GPUS")
  [ "$(id -u)" = 0 ] && launch+=(--allow-run-as-root)
fi

for entry in "${EXPERIMENTS[@]}"; do
  IFS='|' read -r cfg dataset published names <<< "$entry"
  if [ -n "$MODEL_FILTER" ] && [[ "$cfg" != *"$MODEL_FILTER"* ]]; then continue; fi
  ckpt=""
  for name in $names; do
    if [ -f "$DFORMER_ROOT/checkpoints/trained/$name" ]; then
      ckpt="$DFORMER_ROOT/checkpoints/trained/$name"; break
    fi
  done
  data="$DFORMER_ROOT/datasets/$dataset"
  shown_ckpt=${ckpt:-checkpoints/trained/${names%% *}}
  if [ -z "$ckpt" ]; then
    printf '%s\t%s\t%s\t\t%s\n' "$cfg" "$shown_ckpt" "$published" "missing checkpoint" >> "$ROWS"
    echo "[reproduce] $cfg: missing checkpoint (tried: $names)"
    continue
  fi
  if [ ! -f "$data/test.txt" ]; then
    printf '%s\t%s\t%s\t\t%s\n' "$cfg" "$ckpt" "$published" "missing dataset" >> "$ROWS"
    echo "[reproduce] $cfg: missing dataset ($data/test.txt)"
    continue
  fi
  work="$OUT_DIR/${cfg%.py}"
  mkdir -p "$work"
  log="$work/test.log"
  echo "[reproduce] $cfg with $ckpt ..."
  # shellcheck disable=SC2086
  ${launch[@]+"${launch[@]}"} "$PY" tools/test.py "configs/dformer/$cfg" --checkpoint "$ckpt" --tta --sliding \
      --mode test --work-dir "$work" --no-progress \
      --cfg-options "*.dataset.data_root=$data" model.pretrained=None ${EXTRA_ARGS:-} \
      > "$log" 2>&1
  rc=$?
  miou=""
  if [ $rc -eq 0 ] && [ -f "$work/metrics_test.json" ]; then
    miou=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['metrics']['miou'])" \
           "$work/metrics_test.json" 2>/dev/null)
  fi
  if [ -n "$miou" ]; then
    printf '%s\t%s\t%s\t%s\t%s\n' "$cfg" "$ckpt" "$published" "$miou" "ok" >> "$ROWS"
    echo "[reproduce] $cfg: mIoU $miou (published $published)"
  else
    printf '%s\t%s\t%s\t\t%s\n' "$cfg" "$ckpt" "$published" "failed (exit $rc, see $log)" >> "$ROWS"
    echo "[reproduce] $cfg: FAILED (exit $rc), log: $log"
  fi
done

"$PY" - "$ROWS" "$OUT_DIR" <<'PYEOF'
import csv, os, sys
rows_path, out = sys.argv[1], sys.argv[2]
rows = []
with open(rows_path) as f:
    for line in f:
        cfg, ckpt, published, ours, status = line.rstrip("\n").split("\t")
        delta = f"{float(ours) - float(published):+.2f}" if ours else ""
        rows.append([cfg, ckpt, published, f"{float(ours):.2f}" if ours else "", delta, status])
head = ["config", "checkpoint", "published_miou", "our_miou", "delta", "status"]
with open(os.path.join(out, "scores.csv"), "w", newline="") as f:
    csv.writer(f).writerows([head] + rows)
with open(os.path.join(out, "scores.md"), "w") as f:
    f.write("| config | checkpoint | published mIoU | ours | delta | status |\n")
    f.write("|---|---|---|---|---|---|\n")
    for r in rows:
        f.write("| " + " | ".join(f"`{r[0]}`" if i == 0 else (r[i] or "-")
                                 for i in range(6)) + " |\n")
print(open(os.path.join(out, "scores.md")).read())
print(f"[reproduce] table: {out}/scores.md, {out}/scores.csv")
PYEOF
exit 0
