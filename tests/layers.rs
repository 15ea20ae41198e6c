//! The layers of `src/` (README, "How it is built"): every file may use only
//! its own layer and the layers listed for it below, and no two files may
//! use each other, directly or through others.
//!
//! The check reads the `crate::…` paths of every file under `src/` (in `use`
//! lines and in code; `super::` is resolved; comments are skipped), maps each
//! path to the file that defines it, and fails on an import of a layer not
//! listed for the importer, or on a cycle between files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each layer and what it may use besides itself. A layer is the first part
/// of a module path; `store::index` is listed apart because the engines may
/// read the digest index but not the catalog.
const LAYERS: &[(&str, &[&str])] = &[
    ("capi", &["ops", "xml", "error", "flags", "testhook", "logging"]),
    (
        "ops",
        &[
            "engine", "image", "store", "hv", "job", "xml", "error", "testhook",
        ],
    ),
    (
        "engine",
        &[
            "image",
            "store::index",
            "hv",
            "job",
            "xml",
            "error",
            "testhook",
        ],
    ),
    ("job", &["store", "xml", "error", "testhook"]),
    ("hv", &["xml", "error", "testhook"]),
    ("image", &["xml", "error", "testhook"]),
    ("store", &["xml", "error", "testhook"]),
    ("xml", &["error"]),
    ("error", &[]),
    // The C flag values: only the C boundary reads flag words (see
    // `raw_flag_words` below).
    ("flags", &[]),
    // The log's set-up (`log` macros are used everywhere; only the C
    // boundary sets it up).
    ("logging", &[]),
    // Crash-test stop points (feature `test-hooks`): usable from anywhere,
    // using nothing.
    ("testhook", &[]),
];

/// Module path of a file under `src/`: `ops/backup.rs` → `ops::backup`,
/// `ops/mod.rs` → `ops`, `lib.rs` → ``.
fn module_of(rel: &str) -> String {
    let rel = rel.strip_suffix(".rs").unwrap();
    let rel = rel.strip_suffix("/mod").unwrap_or(rel);
    if rel == "lib" {
        return String::new();
    }
    rel.replace('/', "::")
}

/// The source without comments and string literals, so that prose and
/// messages that name a path do not count.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The module paths `file_mod` refers to: `crate::a::b::c`, the items of
/// `crate::a::{b, c::d}`, and `super::…` resolved against `file_mod`.
fn referenced_paths(file_mod: &str, is_mod_rs: bool, code: &str) -> Vec<Vec<String>> {
    // The identifiers of `a::b::c` up to the first thing that is not one.
    let ident = |s: &str| -> Vec<String> {
        let mut parts = Vec::new();
        for seg in s.split("::") {
            let id: String = seg
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let whole = id.len() == seg.len();
            if !id.is_empty() {
                parts.push(id);
            }
            if !whole || parts.is_empty() {
                break;
            }
        }
        parts
    };
    let mut out = Vec::new();
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", {
            let mut m: Vec<String> = file_mod
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            if !is_mod_rs {
                m.pop();
            }
            m
        }),
    ] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().next_back();
            let tail = &rest[at + prefix.len()..];
            rest = tail;
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let head = ident(tail);
            let after_head: usize = head.iter().map(|h| h.len() + 2).sum();
            let mut full = base.clone();
            full.extend(head.iter().cloned());
            if tail.get(after_head..).is_some_and(|t| t.starts_with('{')) {
                let inner = &tail[after_head + 1..];
                let inner = &inner[..inner.find('}').unwrap_or(inner.len())];
                for item in inner.split(',') {
                    let mut p = full.clone();
                    p.extend(ident(item.trim()));
                    out.push(p);
                }
            } else if !full.is_empty() {
                out.push(full);
            }
        }
    }
    out
}

/// The file module a path points into: its longest prefix that is a file.
fn owner<'a>(path: &[String], files: &'a BTreeSet<String>) -> Option<&'a String> {
    (1..=path.len())
        .rev()
        .find_map(|n| files.get(&path[..n].join("::")))
}

fn layer_of(module: &str) -> &str {
    module.split("::").next().unwrap_or("")
}

fn may_use(from: &str, to: &str) -> bool {
    let (lf, lt) = (layer_of(from), layer_of(to));
    if lf == lt || from.is_empty() {
        return true;
    }
    let Some((_, allowed)) = LAYERS.iter().find(|(l, _)| *l == lf) else {
        return false;
    };
    allowed
        .iter()
        .any(|a| *a == lt || to == *a || to.starts_with(&format!("{a}::")))
}

/// Problems in a tree given as (path under src/, text) pairs.
fn check(files: &[(String, String)]) -> Vec<String> {
    let modules: BTreeSet<String> = files.iter().map(|(p, _)| module_of(p)).collect();
    let mut problems = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in files {
        let from = module_of(rel);
        if !from.is_empty() && !LAYERS.iter().any(|(l, _)| *l == layer_of(&from)) {
            problems.push(format!(
                "src/{rel}: in no layer (add it to tests/layers.rs)"
            ));
        }
        let code = code_only(text);
        for path in referenced_paths(&from, rel.ends_with("mod.rs"), &code) {
            let Some(to) = owner(&path, &modules) else {
                continue;
            };
            if *to == from || to.is_empty() {
                continue;
            }
            if !may_use(&from, to) {
                problems.push(format!(
                    "src/{rel}: `{}` reaches layer `{}` from layer `{}`",
                    path.join("::"),
                    layer_of(to),
                    layer_of(&from)
                ));
            }
            edges.entry(from.clone()).or_default().insert(to.clone());
        }
    }
    problems.extend(cycles(&edges));
    problems
}

/// Each cycle of the file graph, found by depth-first search.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    fn visit<'a>(
        n: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
        out: &mut Vec<String>,
    ) {
        state.insert(n, 1);
        stack.push(n);
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| *s == m).unwrap();
                    let mut c: Vec<&str> = stack[at..].to_vec();
                    c.push(m);
                    out.push(format!("import cycle: {}", c.join(" -> ")));
                }
                Some(_) => {}
                None => visit(m, edges, state, stack, out),
            }
        }
        stack.pop();
        state.insert(n, 2);
    }
    let mut state = BTreeMap::new();
    let mut out = Vec::new();
    for n in edges.keys() {
        if !state.contains_key(n.as_str()) {
            visit(n, edges, &mut state, &mut Vec::new(), &mut out);
        }
    }
    out
}

fn read_tree(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            read_tree(&p, root, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.push((rel, std::fs::read_to_string(&p).unwrap()));
        }
    }
}

#[test]
fn src_imports_run_down_the_layers_without_cycles() {
    // LAYERS_SRC: check another tree (to see what the check reports on it).
    let root: PathBuf = std::env::var_os("LAYERS_SRC")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let mut files = Vec::new();
    read_tree(&root, &root, &mut files);
    assert!(
        files.len() > 20,
        "read {} files under {root:?}",
        files.len()
    );
    let problems = check(&files);
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn the_check_catches_upward_imports_and_cycles() {
    let tree = |files: &[(&str, &str)]| -> Vec<(String, String)> {
        files
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect()
    };
    // Clean: downward only, comments and strings ignored.
    let ok = tree(&[
        (
            "ops/backup.rs",
            "use crate::engine::copy::{self, Baseline};\nuse crate::store::catalog::Catalog;",
        ),
        (
            "engine/copy.rs",
            "use crate::store::index::IndexReader; // crate::ops::backup\nlet s = \"crate::ops\";",
        ),
        ("store/index.rs", "use crate::error::Result;"),
        ("store/catalog.rs", ""),
        ("error.rs", ""),
    ]);
    assert_eq!(check(&ok), Vec::<String>::new());
    // Upward: the catalog asks an engine; an engine reads the catalog.
    let up = tree(&[
        (
            "store/catalog.rs",
            "fn f() { crate::engine::live::orphan_outcome(); }",
        ),
        (
            "engine/live.rs",
            "use crate::store::{catalog::Catalog, index};",
        ),
        ("store/index.rs", ""),
    ]);
    let p = check(&up);
    assert!(
        p.iter()
            .any(|p| p.contains("store/catalog.rs") && p.contains("layer `engine`")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|p| p.contains("engine/live.rs") && p.contains("store::catalog")),
        "{p:?}"
    );
    assert!(!p.iter().any(|p| p.contains("store::index")), "{p:?}");
    // A cycle inside one layer, one side through `super::`.
    let cyc = tree(&[
        ("ops/a.rs", "use super::b::X;"),
        ("ops/b.rs", "use crate::ops::c::Y;"),
        ("ops/c.rs", "use crate::ops::a::Z;"),
        ("ops/mod.rs", ""),
    ]);
    let p = check(&cyc);
    assert!(p.iter().any(|p| p.starts_with("import cycle: ")), "{p:?}");
}

/// Flag words stay at the C boundary: `capi` turns each caller's flag word
/// into the typed options of `ops::options`, and nothing below it takes,
/// keeps or passes one on. Below `src/capi/`, a name containing `flag`
/// (a parameter, a field, a binding) may not be typed as a bare 32- or
/// 64-bit integer, and only `hv` (the libvirt adapter) may hold one of
/// libvirt's own flag types (`virt::sys::vir…Flags…`), which are libvirt's
/// words for libvirt's own calls (`virDomainUndefineFlags`,
/// `virDomainBackupBegin`). The other words that reach the operating system
/// are listed here, with the call they are for.
const RAW_FLAG_WORDS_ALLOWED: &[(&str, &str, &str)] = &[(
    "image/cache.rs",
    "flags: libc::c_uint",
    "the kernel's sync_file_range(2) flags",
)];

/// The integer types a flag word comes as (`unsigned int` is `c_uint`).
const FLAG_WORD_TYPES: &[&str] = &["u32", "i32", "u64", "i64", "c_uint", "c_int", "c_ulong"];

/// Each `name: Type` in `code` whose name contains `flag` (constants
/// aside), as the name and the type's path.
fn flag_annotations(code: &str) -> Vec<(String, String)> {
    let b = code.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = Vec::new();
    for (i, _) in code.match_indices(':') {
        // Not a path separator (`a::b`).
        if b.get(i + 1) == Some(&b':') || (i > 0 && b[i - 1] == b':') {
            continue;
        }
        let mut end = i;
        while end > 0 && b[end - 1].is_ascii_whitespace() {
            end -= 1;
        }
        let mut start = end;
        while start > 0 && is_ident(b[start - 1]) {
            start -= 1;
        }
        let name = &code[start..end];
        // Constants (`NBD_FLAG_…: u32`) are values, not words in flight.
        let constant = !name.bytes().any(|c| c.is_ascii_lowercase());
        if constant || !name.to_ascii_lowercase().contains("flag") {
            continue;
        }
        let ty: String = code[i + 1..]
            .trim_start()
            .trim_start_matches('&')
            .trim_start_matches("mut ")
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        out.push((name.to_string(), ty));
    }
    out
}

/// Problems in a tree given as (path under src/, text) pairs: raw flag
/// words below the C boundary.
fn raw_flag_words(files: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (rel, text) in files {
        if rel.starts_with("capi/") {
            continue;
        }
        for (name, ty) in flag_annotations(&code_only(text)) {
            let last = ty.rsplit("::").next().unwrap_or("");
            let shown = format!("{name}: {ty}");
            if RAW_FLAG_WORDS_ALLOWED
                .iter()
                .any(|(f, a, _)| f == rel && *a == shown)
            {
                continue;
            }
            if FLAG_WORD_TYPES.contains(&last) {
                problems.push(format!(
                    "src/{rel}: `{shown}` is a raw flag word below the C boundary \
                     (take a type of ops::options; capi converts the flags)"
                ));
            } else if last.starts_with("vir") && last.contains("Flags") && !rel.starts_with("hv/") {
                problems.push(format!(
                    "src/{rel}: `{shown}` is a libvirt flag word outside hv"
                ));
            }
        }
    }
    problems
}

#[test]
fn no_flag_word_below_the_c_boundary() {
    let root: PathBuf = std::env::var_os("LAYERS_SRC")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let mut files = Vec::new();
    read_tree(&root, &root, &mut files);
    assert!(
        files.len() > 20,
        "read {} files under {root:?}",
        files.len()
    );
    let problems = raw_flag_words(&files);
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn the_flag_check_catches_raw_words() {
    let tree = |files: &[(&str, &str)]| -> Vec<(String, String)> {
        files
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect()
    };
    // Clean: typed options, the boundary's own words, libvirt's in hv, the
    // listed kernel word, paths through `flags::`, other flag types, prose.
    let ok = tree(&[
        (
            "ops/backup.rs",
            "pub fn delete(&self, opts: DeleteOptions) -> Result<()> { let f = crate::flags::X; }\n\
             // fn old(flags: u32)\nlet s = \"flags: u32\";",
        ),
        (
            "capi/backup.rs",
            "pub extern \"C\" fn virDomainBackupDelete(b: Ptr, flags: c_uint) -> c_int {}",
        ),
        (
            "hv/libvirt.rs",
            "pub fn undefine_raw(flags: virt::sys::virDomainUndefineFlagsValues) {}",
        ),
        (
            "image/cache.rs",
            "fn sync_range(file: &File, offset: u64, len: u64, flags: libc::c_uint) -> i32 {}",
        ),
        (
            "store/folder.rs",
            "pub fn open(&self, name: &str, flags: OFlags) {}",
        ),
        (
            "image/nbd.rs",
            "const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;\nChunk { flags: u16, typ: u16, len: u32 },",
        ),
    ]);
    assert_eq!(raw_flag_words(&ok), Vec::<String>::new());
    // Planted: a raw word in an operation, an engine, a struct field, a
    // c_uint spelled out, libvirt's word outside hv, and the kernel word
    // in a file not listed for it.
    let bad = tree(&[
        (
            "ops/backup.rs",
            "pub fn delete(&self, flags: u32) -> Result<()> {}",
        ),
        (
            "engine/copy.rs",
            "fn run(mut restore_flags: std::ffi::c_uint) {}",
        ),
        (
            "ops/restore.rs",
            "struct Untouchable {\n    flags : u32,\n}",
        ),
        (
            "error.rs",
            "pub fn check_flags(flags: c_uint, allowed: u32) {}",
        ),
        (
            "ops/create.rs",
            "fn f(flags: virt::sys::virDomainBackupBeginFlags) {}",
        ),
        ("image/disk.rs", "fn sync_range(flags: libc::c_uint) {}"),
    ]);
    let p = raw_flag_words(&bad);
    for (file, what) in [
        ("ops/backup.rs", "`flags: u32`"),
        ("engine/copy.rs", "`restore_flags: std::ffi::c_uint`"),
        ("ops/restore.rs", "`flags: u32`"),
        ("error.rs", "`flags: c_uint`"),
        ("ops/create.rs", "outside hv"),
        ("image/disk.rs", "`flags: libc::c_uint`"),
    ] {
        assert!(
            p.iter()
                .any(|p| p.starts_with(&format!("src/{file}:")) && p.contains(what)),
            "{file}: {p:?}"
        );
    }
    assert_eq!(p.len(), 6, "{p:?}");
}
