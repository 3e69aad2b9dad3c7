#!/usr/bin/env bash
# make demo: every job in jobs/ against the embedded simulator, then status, cost and queries.
set -euo pipefail
cd "$(dirname "$0")/.."
FP=.venv/bin/flashpipe
export FLASHPIPE_DB=demo.duckdb
for job in jobs/*.toml; do
  echo "== flashpipe run $job --sim"
  "$FP" run "$job" --sim --quiet
done
echo
echo "== the tickets job again in the half-price lanes: one line of the job file, provider.lane"
echo "   (--no-cache: the same tickets would otherwise be answered from the cache)"
for lane in flex batch; do
  echo "== flashpipe run jobs/classify_tickets.toml --sim --no-cache --set provider.lane=$lane"
  "$FP" run jobs/classify_tickets.toml --sim --quiet --no-cache --set "name=tickets-$lane" --set "provider.lane=$lane"
done
echo
echo "== the same tickets under a new name: every answer comes from the cache, 0 requests"
"$FP" run jobs/classify_tickets.toml --sim --quiet --set "name=tickets-again"
echo
echo "== flashpipe status"
"$FP" status
echo
echo "== flashpipe cost"
"$FP" cost
echo
echo "== SELECT label, count(*) FROM results_tickets_demo GROUP BY label"
"$FP" query "SELECT label, count(*) AS n FROM results_tickets_demo GROUP BY label ORDER BY n DESC"
echo
echo "== SELECT flagged, count(*) FROM results_comments_demo GROUP BY flagged"
"$FP" query "SELECT flagged, count(*) AS n FROM results_comments_demo GROUP BY flagged ORDER BY flagged"
echo
echo "== a second run sends nothing: the store already has every row"
"$FP" run jobs/classify_tickets.toml --sim --quiet
echo
echo "== look at it all in a browser (jobs, charts, every row's answer and cost): make ui"
echo "   (= $FP ui --db demo.duckdb, then open http://127.0.0.1:8642/)"
