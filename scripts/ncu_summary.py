"""Side by side: the metrics of every kernel in an `ncu --page details --csv` export.

python scripts/ncu_summary.py DETAILS.csv [SUBSTRING ...]  (only metrics whose section or name
contains one of the substrings; all where none given)
"""
import csv
import sys

lines = open(sys.argv[1]).read().splitlines()
header = next(i for i, line in enumerate(lines) if line.startswith('"ID"'))  # after ==PROF== lines
rows = list(csv.DictReader(lines[header:]))
wanted = [s.lower() for s in sys.argv[2:]]
kernels = list(dict.fromkeys(r["ID"] for r in rows))
names = {r["ID"]: r["Kernel Name"][:60] for r in rows}
for kid in kernels:
    r = next(r for r in rows if r["ID"] == kid)
    print(f"[{kid}] {names[kid]}  grid {r['Grid Size']} block {r['Block Size']}")
table = {}
for r in rows:
    key = (r["Section Name"], r["Metric Name"], r["Metric Unit"])
    table.setdefault(key, {})[r["ID"]] = r["Metric Value"]
for (section, metric, unit), values in table.items():
    if wanted and not any(w in section.lower() or w in metric.lower() for w in wanted):
        continue
    print(f"{section[:18]:18} {metric[:44]:44} {unit[:10]:10} "
          + " ".join(f"{values.get(k, '-'):>14}" for k in kernels))
