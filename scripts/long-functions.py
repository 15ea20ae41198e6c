#!/usr/bin/env python3
"""Print the longest Rust functions (lines from `fn` to its closing brace)
under the given folders, longest first: N=20 scripts/long-functions.py src/ops"""
import re, sys, os
FN = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+"C"\s+)?fn\s+(\w+)')
def strip(line):
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])'", "''", line)
    return line.split('//')[0]
res = []
for root in sys.argv[1:]:
    for dp, _, fs in os.walk(root):
        for f in fs:
            if not f.endswith('.rs'): continue
            p = os.path.join(dp, f)
            lines = open(p).read().split('\n')
            i = 0
            while i < len(lines):
                m = FN.match(lines[i])
                if m:
                    depth = 0; started = False; j = i
                    while j < len(lines):
                        s = strip(lines[j])
                        if not started and ';' in s and '{' not in s: break
                        for c in s:
                            if c == '{': depth += 1; started = True
                            elif c == '}': depth -= 1
                        if started and depth == 0: break
                        j += 1
                    if started:
                        res.append((j - i + 1, p, m.group(7), i + 1))
                i += 1
res.sort(reverse=True)
n = int(os.environ.get('N', 10))
for r in res[:n]: print(f"{r[0]:5d} {r[1]}:{r[3]} {r[2]}")
