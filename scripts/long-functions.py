#!/usr/bin/env python3
"""Rust functions by length: the lines from the one holding `fn` to the one
holding the closing brace of its body (attributes and doc comments not
counted; a function nested in another counts in both).

    N=20 scripts/long-functions.py src/ops       the 20 longest (N: 10)
    scripts/long-functions.py --max 80 src cli/src
        every function over 80 lines, longest first; exit status 1 if
        there is one (make check runs this on the library and the command)

Test code is left out unless --tests is given: `tests/` folders inside
the folders given, and items marked `#[cfg(test)]` (a `mod tests`, a
test-only `impl`) or `#[test]`. A test is a table of cases or a scenario read top to
bottom; splitting it to meet a length limit makes it harder to follow.
`target/` folders are never read.

Files are read with a small Rust lexer (strings, raw strings, byte and
char literals, lifetimes, nested block comments), not line by line, so
braces inside literals and comments do not count."""

import argparse
import os
import sys


def tokens(text):
    """(kind, value, line) of the tokens that matter here: identifiers,
    and the punctuation # [ ] ( ) { } ; — literals and comments skipped."""
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == '\n':
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif text.startswith('//', i):
            j = text.find('\n', i)
            i = n if j < 0 else j
        elif text.startswith('/*', i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith('/*', i):
                    depth, i = depth + 1, i + 2
                elif text.startswith('*/', i):
                    depth, i = depth - 1, i + 2
                else:
                    line += text[i] == '\n'
                    i += 1
        elif raw_string_at(text, i):
            start = i
            i = skip_raw_string(text, i)
            line += text.count('\n', start, i)
        elif c == '"' or (c in 'bc' and text.startswith('"', i + 1)):
            start = i
            i = skip_string(text, i + (c != '"'))
            line += text.count('\n', start, i)
        elif c == "'" or (c == 'b' and text.startswith("'", i + 1)):
            i = skip_char_or_lifetime(text, i + (c == 'b'))
        elif c.isalpha() or c == '_':
            j = i
            while j < n and (text[j].isalnum() or text[j] == '_'):
                j += 1
            yield ('ident', text[i:j], line)
            i = j
        else:
            if c in '#[](){};':
                yield ('punct', c, line)
            i += 1


def raw_string_at(text, i):
    """Whether r"…", r#"…"#, br"…" or cr"…" starts at i."""
    j = i + (text[i] in 'bc')
    if not text.startswith('r', j):
        return False
    if i > 0 and (text[i - 1].isalnum() or text[i - 1] == '_'):
        return False
    j += 1
    while j < len(text) and text[j] == '#':
        j += 1
    return j < len(text) and text[j] == '"'


def skip_raw_string(text, i):
    j = text.index('r', i) + 1
    hashes = 0
    while text[j] == '#':
        hashes += 1
        j += 1
    end = text.find('"' + '#' * hashes, j + 1)
    return len(text) if end < 0 else end + 1 + hashes


def skip_string(text, i):
    """Past the string whose opening quote is at i."""
    j = i + 1
    while j < len(text):
        if text[j] == '\\':
            j += 2
        elif text[j] == '"':
            return j + 1
        else:
            j += 1
    return j


def skip_char_or_lifetime(text, i):
    """Past the char literal or lifetime (or label) whose quote is at i."""
    if text.startswith('\\', i + 1):
        # '\n', '\'', '\\', '\x41', '\u{1F600}': past the escaped character.
        j = i + 3
        while j < len(text) and text[j] != "'":
            j += 1
        return j + 1
    if i + 2 < len(text) and text[i + 2] == "'":
        return i + 3
    return i + 1


def functions(text, with_tests):
    """(length, name, line) of every function with a body in `text`."""
    toks = list(tokens(text))
    skip_until = -1  # index of the last token of a test item being skipped
    out = []
    for k, (kind, value, line) in enumerate(toks):
        if k <= skip_until:
            continue
        if not with_tests and kind == 'punct' and value == '#':
            attr, end = attribute(toks, k)
            if attr in ('cfg(test)', 'test'):
                skip_until = item_end(toks, end + 1)
                continue
        if kind == 'ident' and value == 'fn' and k + 1 < len(toks) \
                and toks[k + 1][0] == 'ident':
            end = body_end(toks, k + 2)
            if end is not None:
                out.append((toks[end][2] - line + 1, toks[k + 1][1], line))
    return out


def attribute(toks, k):
    """The text of the attribute `#[…]` at k (spaces removed) and the index
    of its closing bracket; ('', k) if k starts none."""
    if k + 1 >= len(toks) or toks[k + 1][1] != '[':
        return '', k
    depth, j, text = 0, k + 1, []
    while j < len(toks):
        v = toks[j][1]
        if v == '[':
            depth += 1
        elif v == ']':
            depth -= 1
            if depth == 0:
                return ''.join(text[1:]), j
        text.append(v)
        j += 1
    return '', k


def item_end(toks, k):
    """Index of the last token of the item starting at k: its `;`, or the
    brace closing its first block (further attributes come first)."""
    depth = 0
    j = k
    while j < len(toks):
        v = toks[j][1]
        if v in '([':
            depth += 1
        elif v in ')]':
            depth -= 1
        elif v == ';' and depth == 0:
            return j
        elif v == '{' and depth == 0:
            return matching_brace(toks, j)
        j += 1
    return len(toks)


def body_end(toks, k):
    """After a function's name at k-1: the index of the brace closing its
    body, or None for a declaration without one (`;` first)."""
    depth = 0
    j = k
    while j < len(toks):
        v = toks[j][1]
        if v in '([':
            depth += 1
        elif v in ')]':
            depth -= 1
        elif v == ';' and depth == 0:
            return None
        elif v == '{' and depth == 0:
            return matching_brace(toks, j)
        j += 1
    return None


def matching_brace(toks, j):
    depth = 0
    while j < len(toks):
        v = toks[j][1]
        if v == '{':
            depth += 1
        elif v == '}':
            depth -= 1
            if depth == 0:
                return j
        j += 1
    return len(toks) - 1


def rust_files(roots, with_tests):
    for root in roots:
        if os.path.isfile(root):
            yield root
            continue
        for dp, dirs, fs in os.walk(root):
            dirs[:] = sorted(d for d in dirs
                             if d != 'target' and (with_tests or d != 'tests'))
            for f in sorted(fs):
                if f.endswith('.rs'):
                    yield os.path.join(dp, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--max', type=int, metavar='LINES',
                    help='print every function longer than LINES; exit 1 if any')
    ap.add_argument('--tests', action='store_true',
                    help='count test code too (tests/ folders, #[cfg(test)], #[test])')
    ap.add_argument('paths', nargs='+', help='files or folders to read')
    args = ap.parse_args()
    res = []
    for p in rust_files(args.paths, args.tests):
        with open(p, encoding='utf-8') as f:
            text = f.read()
        res.extend((n, p, line, name) for n, name, line in functions(text, args.tests))
    res.sort(key=lambda r: (-r[0], r[1], r[2]))
    if args.max is None:
        for n, p, line, name in res[:int(os.environ.get('N', 10))]:
            print(f"{n:5d} {p}:{line} {name}")
        return 0
    over = [r for r in res if r[0] > args.max]
    for n, p, line, name in over:
        print(f"{n:5d} {p}:{line} {name}")
    if over:
        print(f"{len(over)} function(s) longer than {args.max} lines "
              "(scripts/long-functions.py): split them", file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
