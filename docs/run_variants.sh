#!/usr/bin/env bash
# Train the default task once per model variant; the sweep summary gathers them into one table:
# multirun/variants/summary.md (docs/variants.md shows it).
set -u
cd "$(dirname "$0")/.."
out=multirun/variants
if [ -e "$out" ]; then  # each job refuses a folder that holds a run: say so once, not once per variant
  echo "$out holds an earlier run of this script: move it away (or rm -r $out), then run again" >&2
  exit 2
fi
failed=0
while read -r overrides; do
  python transformer_playground.py -m hydra.sweep.dir=$out $overrides > /dev/null 2>&1 || { echo "FAILED: $overrides"; failed=1; }
done <<'LIST'
model.norm_position=post
model.norm_position=pre model.final_norm=true
model.norm=rmsnorm
model.final_norm=true
model.positional=learned
model.positional=rotary
model.positional=none dataset=sort
model.positional=none
model.activation=gelu
model.activation=swiglu
model.tie_embeddings=none
model.tie_embeddings=all
LIST
cat $out/summary.md
exit $failed
