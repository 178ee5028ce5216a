"""Print the SASS lines with the most warp-stall samples from `ncu --page source --csv` output.

python scripts/ncu_top_sass.py report.sass.csv [N]   (the CSV is too big to bring back whole)
"""
import csv
import sys

rows = list(csv.reader(open(sys.argv[1], errors="replace")))
top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
header_at = next(i for i, r in enumerate(rows) if any("Source" == c for c in r))
header, body = rows[header_at], rows[header_at + 1:]
col = lambda name: next(i for i, c in enumerate(header) if name in c)
src, samples = col("Source"), col("Warp Stall Sampling (All")
total = sum(float(r[samples] or 0) for r in body if len(r) > samples)
print("columns:", [c for c in header if "Stall" in c or "stall" in c][:12])
ranked = sorted((r for r in body if len(r) > samples), key=lambda r: -float(r[samples] or 0))
for r in ranked[:top]:
    share = 100 * float(r[samples] or 0) / max(total, 1)
    print(f"{share:5.1f}%  {r[0]:>6}  {r[src][:90]}")
