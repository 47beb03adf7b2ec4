//! The architecture map (ARCHITECTURE.md) as a test: reads every file under `src/`, finds the
//! modules it imports (`use crate::…` with nested braces, inline `crate::a::b` paths, `super::`
//! and `self::` paths, 2018-style paths through a child module), places each file on the map,
//! and fails on an import the map forbids and on any import cycle between the map's modules.
//! Unit tests (`#[cfg(test)] mod tests`) count like the code around them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

/// The floors, bottom up (ARCHITECTURE.md, "The map").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    /// L0: config, account, mail, limits, logging, secret, net, deflate, tls, state, metrics, sd_notify,
    /// clock, provider_profile, seal.
    Floor,
    /// L1: `imap::wire` (the IMAP syntax) and `store` (redb); neither imports the other.
    Base,
    /// L2: `context`.
    Context,
    /// L3: coi, push, receipts, oauth, openpgp, deltachat.
    Wing,
    /// L4: imap::session, imap::upstream (with imap::conn), smtp, worker, cluster.
    Edge,
    /// L5: main, app, check, trust, cli, and the crate root.
    Top,
}

/// One module of the map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Node {
    name: String,
    floor: Level,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let floor = match self.floor {
            Level::Floor => "floor",
            Level::Base if self.name == "store" => "store",
            Level::Base => "wire",
            Level::Context => "context",
            Level::Wing => "wing",
            Level::Edge => "edge",
            Level::Top => "top",
        };
        write!(f, "{} ({floor})", self.name)
    }
}

const FLOOR_FILES: &[&str] = &[
    "config",
    "account",
    "mail",
    "limits",
    "logging",
    "secret",
    "net",
    "tls",
    "state",
    "metrics",
    "sd_notify",
    "clock",
    "deflate",
    "provider_profile",
    "seal",
];
const TOP_FILES: &[&str] = &["main", "app", "check", "trust", "cli"];

/// Where a module (its path below the crate root) stands on the map; `None`: not on the map.
fn place(module: &[String]) -> Option<Node> {
    let node = |name: &str, floor| Some(Node { name: name.to_string(), floor });
    let first = match module.first() {
        None => return node("crate", Level::Top),
        Some(first) => first.as_str(),
    };
    let second = module.get(1).map(String::as_str);
    match (first, second) {
        ("imap", None) => node("imap", Level::Top),
        ("imap", Some("wire")) => node("imap::wire", Level::Base),
        ("imap", Some("upstream" | "conn")) => node("imap::upstream", Level::Edge),
        ("imap", Some("session")) => node("imap::session", Level::Edge),
        ("imap", Some(_)) => None,
        ("smtp" | "worker" | "cluster", _) => node(first, Level::Edge),
        ("coi" | "push" | "receipts" | "oauth" | "openpgp" | "deltachat", _) => node(first, Level::Wing),
        ("context", None) => node("context", Level::Context),
        ("store", _) => node("store", Level::Base),
        (f, _) if FLOOR_FILES.contains(&f) => node(f, Level::Floor),
        (t, _) if TOP_FILES.contains(&t) => node(t, Level::Top),
        _ => None,
    }
}

/// Whether `from` may import `to`; the rule it breaks otherwise.
fn rule(from: &Node, to: &Node) -> Result<(), &'static str> {
    if from.name == to.name || to.floor < from.floor {
        return Ok(());
    }
    if to.floor > from.floor {
        return Err("imports upward");
    }
    match from.floor {
        Level::Floor | Level::Top => Ok(()),
        Level::Edge if to.name == "imap::upstream" => Ok(()),
        Level::Edge => Err("an edge imports another edge (only imap::upstream is shared)"),
        Level::Wing => Err("a wing imports another wing (shared vocabulary belongs on a lower floor)"),
        Level::Base => Err("wire and store do not import each other"),
        Level::Context => Ok(()),
    }
}

/// One import found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Import {
    file: String,
    line: usize,
    /// As written, e.g. `crate::coi::metadata::Filter` or `super::queue::now`.
    written: String,
    /// The module it names (path below the crate root), after resolving `super`/`self`.
    module: Vec<String>,
}

/// Everything the checker found wrong.
#[derive(Debug, Default)]
struct Findings {
    unmapped: Vec<String>,
    forbidden: Vec<String>,
    cycles: Vec<String>,
}

impl Findings {
    fn is_empty(&self) -> bool {
        self.unmapped.is_empty() && self.forbidden.is_empty() && self.cycles.is_empty()
    }
}

impl fmt::Display for Findings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in self.unmapped.iter().chain(&self.forbidden).chain(&self.cycles) {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// The module path of a file below `src/`: `coi/mod.rs` → `coi`, `lib.rs` → the root.
fn module_of(file: &str) -> Vec<String> {
    let stem = file.strip_suffix(".rs").unwrap_or(file);
    let mut parts: Vec<String> = stem.split('/').map(str::to_string).collect();
    if parts.last().is_some_and(|p| p == "mod") || parts == ["lib"] {
        parts.pop();
    }
    parts
}

/// Checks a whole tree: `files` are (path below `src/`, contents).
fn check(files: &[(String, String)]) -> Findings {
    let mut findings = Findings::default();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(f, _)| module_of(f)).collect();
    let mut edges: BTreeMap<(Node, Node), Vec<String>> = BTreeMap::new();
    for (file, text) in files {
        let from_module = module_of(file);
        let Some(from) = place(&from_module) else {
            findings.unmapped.push(format!(
                "src/{file}: not on the map (put it under a module that ARCHITECTURE.md names, or add it there and to tests/architecture.rs)"
            ));
            continue;
        };
        for import in imports(file, text, &modules) {
            let Some(to) = place(&import.module) else { continue };
            if from.name == to.name {
                continue;
            }
            let at = format!("src/{}:{}", import.file, import.line);
            if let Err(why) = rule(&from, &to) {
                findings.forbidden.push(format!("{at}: {from} {why}: {to} (`{}`)", import.written));
            }
            let places = edges.entry((from.clone(), to)).or_default();
            if !places.contains(&at) {
                places.push(at);
            }
        }
    }
    for cycle in cycles(&edges) {
        let mut text =
            format!("import cycle between {}:", cycle.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", "));
        for ((from, to), places) in &edges {
            if cycle.contains(from) && cycle.contains(to) {
                text.push_str(&format!("\n    {} -> {} at {}", from.name, to.name, places.join(", ")));
            }
        }
        findings.cycles.push(text);
    }
    findings
}

/// The strongly connected components with more than one node (Tarjan).
fn cycles(edges: &BTreeMap<(Node, Node), Vec<String>>) -> Vec<Vec<Node>> {
    let nodes: BTreeSet<&Node> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let nodes: Vec<&Node> = nodes.into_iter().collect();
    let index_of = |n: &Node| nodes.iter().position(|m| *m == n).expect("known node");
    let mut next: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (a, b) in edges.keys() {
        next[index_of(a)].push(index_of(b));
    }
    struct Tarjan<'a> {
        next: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        stack: Vec<usize>,
        on_stack: Vec<bool>,
        counter: usize,
        out: Vec<Vec<usize>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: usize) {
            self.index[v] = Some(self.counter);
            self.low[v] = self.counter;
            self.counter += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
            for &w in &self.next[v].clone() {
                match self.index[w] {
                    None => {
                        self.visit(w);
                        self.low[v] = self.low[v].min(self.low[w]);
                    }
                    Some(i) if self.on_stack[w] => self.low[v] = self.low[v].min(i),
                    Some(_) => {}
                }
            }
            if Some(self.low[v]) == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                self.out.push(component);
            }
        }
    }
    let n = nodes.len();
    let mut t = Tarjan {
        next: &next,
        index: vec![None; n],
        low: vec![0; n],
        stack: Vec::new(),
        on_stack: vec![false; n],
        counter: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if t.index[v].is_none() {
            t.visit(v);
        }
    }
    t.out
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|c| {
            let mut c: Vec<Node> = c.into_iter().map(|i| nodes[i].clone()).collect();
            c.sort();
            c
        })
        .collect()
}

/// The imports of one file (its unit tests included: they live in the module and obey its
/// rules).
fn imports(file: &str, text: &str, modules: &BTreeSet<Vec<String>>) -> Vec<Import> {
    let code = blank_comments_and_literals(text);
    let file_module = module_of(file);
    // In main.rs (the binary) the library is `coi_proxy`, the same modules.
    let crate_names: &[&str] = if file == "main.rs" { &["crate", "coi_proxy"] } else { &["crate"] };
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let line_at = |pos: usize| code[..pos].matches('\n').count() + 1;
    let resolve = |written: String, pos: usize, here: &[String], out: &mut Vec<Import>| {
        let segments: Vec<String> = written.split("::").map(|s| s.trim().to_string()).collect();
        let absolute: Vec<String> = match segments[0].as_str() {
            s if crate_names.contains(&s) => segments[1..].to_vec(),
            "super" | "self" => {
                let mut base = here.to_vec();
                let mut rest = segments.as_slice();
                while let Some(first) = rest.first() {
                    match first.as_str() {
                        "super" => {
                            base.pop();
                        }
                        "self" => {}
                        _ => break,
                    }
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                base
            }
            // 2018 paths: a child module of this one (`use relay::SmtpClient;` in smtp/mod.rs).
            first if modules.contains(&[here.to_vec(), vec![first.to_string()]].concat()) => {
                [here.to_vec(), segments].concat()
            }
            _ => return,
        };
        let mut module = absolute;
        while !module.is_empty() && !modules.contains(&module) {
            module.pop();
        }
        out.push(Import { file: file.to_string(), line: line_at(pos), written, module });
    };
    // Inline modules (`mod name { … }`) open at a brace depth; `super` inside one is the file.
    let (mut depth, mut inline): (usize, Vec<(String, usize)>) = (0, Vec::new());
    let here = |inline: &[(String, usize)]| -> Vec<String> {
        file_module.iter().cloned().chain(inline.iter().map(|(name, _)| name.clone())).collect()
    };
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => depth += 1,
            b'}' => {
                depth = depth.saturating_sub(1);
                inline.retain(|(_, d)| *d <= depth);
            }
            _ => {}
        }
        if word_at(bytes, i, "mod") {
            let rest = &code[i + 3..];
            let name: String = rest.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            let after = rest.trim_start()[name.len()..].trim_start();
            if !name.is_empty() && after.starts_with('{') {
                inline.push((name, depth + 1));
            }
        }
        if word_at(bytes, i, "use") {
            let start = i + 3;
            let Some(len) = code[start..].find(';') else { break };
            for path in expand_use_tree(&code[start..start + len]) {
                resolve(path, i, &here(&inline), &mut out);
            }
            i = start + len + 1;
            continue;
        }
        let crate_word = crate_names.iter().chain(&["super", "self"]).find(|w| {
            word_at(bytes, i, w) && code[i + w.len()..].starts_with("::") && (i == 0 || bytes[i - 1] != b':')
        });
        if let Some(w) = crate_word {
            let mut end = i + w.len();
            while code[end..].starts_with("::") {
                let seg_start = end + 2;
                let seg_len = code[seg_start..].find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(0);
                if seg_len == 0 {
                    break;
                }
                end = seg_start + seg_len;
            }
            resolve(code[i..end].to_string(), i, &here(&inline), &mut out);
            i = end;
            continue;
        }
        i += 1;
    }
    out
}

/// Whether the word `w` stands at `i` (not inside a longer identifier).
fn word_at(bytes: &[u8], i: usize, w: &str) -> bool {
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    bytes[i..].starts_with(w.as_bytes())
        && (i == 0 || !ident(bytes[i - 1]))
        && bytes.get(i + w.len()).is_none_or(|&b| !ident(b))
}

/// `a::{b, c::{d, e as f}, self}` → `a::b`, `a::c::d`, `a::c::e`, `a`.
fn expand_use_tree(tree: &str) -> Vec<String> {
    // One space where the source had any, and none around the separators.
    let mut tree = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    for sep in ["::", "{", "}", ","] {
        tree = tree.replace(&format!(" {sep}"), sep).replace(&format!("{sep} "), sep);
    }
    let mut out = Vec::new();
    expand_into("", &tree, &mut out);
    out
}

fn expand_into(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let mut depth = 0;
    let mut start = 0;
    let mut items = Vec::new();
    for (i, c) in tree.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&tree[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&tree[start..]);
    for item in items.into_iter().filter(|i| !i.is_empty()) {
        match item.find('{') {
            Some(open) => {
                let inner = &item[open + 1..item.rfind('}').unwrap_or(item.len())];
                expand_into(&format!("{prefix}{}", &item[..open]), inner, out);
            }
            None => {
                let item = item.split(" as ").next().unwrap_or(item).trim();
                let path = format!("{prefix}{item}");
                let path = path.strip_suffix("::self").unwrap_or(&path);
                let path = path.strip_suffix("::*").unwrap_or(path);
                out.push(path.trim_end_matches(':').to_string());
            }
        }
    }
}

/// The text with comments, string and character literals replaced by spaces (line breaks kept),
/// so that nothing in them is taken for code.
fn blank_comments_and_literals(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to.min(b.len())] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = memchr(b'\n', &b[i..]).map_or(b.len(), |n| i + n);
            blank(&mut out, i, end);
            i = end;
        } else if rest.starts_with(b"/*") {
            let (mut depth, mut j) = (1, i + 2);
            while j < b.len() && depth > 0 {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if let Some((hashes, open)) = raw_string_start(b, i) {
            let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
            let end = find(&b[open..], &close).map_or(b.len(), |n| open + n + close.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j + 1);
            i = j + 1;
        } else if b[i] == b'\'' {
            // A character literal ('a', '\n', '\u{1F600}') or a lifetime ('a).
            let end = if b.get(i + 1) == Some(&b'\\') {
                memchr(b'\'', &b[i + 2..]).map(|n| i + 2 + n + 1)
            } else {
                let ch_len = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                (b.get(i + 1 + ch_len) == Some(&b'\'')).then_some(i + 2 + ch_len)
            };
            match end {
                Some(end) => {
                    blank(&mut out, i, end);
                    i = end;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

/// `r"`, `r#"`, `br##"` …: the number of hashes and where the content starts.
fn raw_string_start(b: &[u8], i: usize) -> Option<(usize, usize)> {
    if i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') {
        return None;
    }
    let mut j = i;
    if b.get(j) == Some(&b'b') {
        j += 1;
    }
    if b.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let hashes = b[j..].iter().take_while(|&&c| c == b'#').count();
    (b.get(j + hashes) == Some(&b'"')).then_some((hashes, j + hashes + 1))
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&c| c == needle)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Every `.rs` file below `dir`, as (path relative to `dir` with `/`, contents).
fn read_tree(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).expect("readable directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(dir).expect("below dir").to_string_lossy().replace('\\', "/");
                out.push((rel, std::fs::read_to_string(&path).expect("readable file")));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_map_holds() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = read_tree(&src);
    assert!(files.len() > 40, "read {} files from {}", files.len(), src.display());
    let findings = check(&files);
    assert!(findings.is_empty(), "the architecture map (ARCHITECTURE.md) is broken:\n{findings}");
}

/// The checker itself, on synthetic trees: it must see what it is meant to see.
mod checker {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> Vec<(String, String)> {
        files.iter().map(|(p, t)| (p.to_string(), t.to_string())).collect()
    }

    const BASE: &[(&str, &str)] = &[
        (
            "lib.rs",
            "pub mod coi;\npub mod push;\npub mod store;\npub mod config;\npub mod secret;\npub mod smtp;\npub mod worker;\npub mod imap;\n",
        ),
        ("coi/mod.rs", "pub mod metadata;\npub mod session;\n"),
        ("coi/metadata.rs", "pub struct Filter;\n"),
        ("coi/session.rs", "use super::metadata::Filter;\n"),
        ("push/mod.rs", "pub mod entries;\n"),
        ("push/entries.rs", "use crate::store::Store;\n"),
        ("store/mod.rs", "pub struct Store;\n"),
        ("config.rs", "use crate::secret::Secret;\n"),
        ("secret.rs", "pub struct Secret;\n"),
        ("smtp/mod.rs", "pub mod queue;\nuse crate::imap::upstream::Upstream;\n"),
        ("smtp/queue.rs", "pub fn now() {}\n"),
        ("worker/mod.rs", "use crate::coi::metadata::Filter;\n"),
        ("imap/mod.rs", "pub mod upstream;\npub mod session;\npub mod wire;\n"),
        ("imap/upstream.rs", "use crate::imap::wire::X;\n"),
        ("imap/session.rs", "use crate::coi::session::CoiSession;\n"),
        ("imap/wire.rs", "pub struct X;\n"),
    ];

    fn with(changes: &[(&str, &str)]) -> Findings {
        let mut files = tree(BASE);
        for (path, text) in changes {
            match files.iter_mut().find(|(p, _)| p == path) {
                Some(f) => f.1 = text.to_string(),
                None => files.push((path.to_string(), text.to_string())),
            }
        }
        check(&files)
    }

    #[test]
    fn a_clean_tree_passes() {
        let findings = with(&[]);
        assert!(findings.is_empty(), "{findings}");
    }

    #[test]
    fn an_upward_import_in_nested_braces_is_found_with_its_place() {
        let findings = with(&[(
            "store/mod.rs",
            "pub struct Store;\n\nuse crate::{config::X, coi::{metadata::{Filter, Other}}};\n",
        )]);
        let text = findings.to_string();
        assert_eq!(findings.forbidden.len(), 2, "{text}");
        assert!(
            text.contains(
                "src/store/mod.rs:3: store (store) imports upward: coi (wing) (`crate::coi::metadata::Filter`)"
            ),
            "{text}"
        );
    }

    #[test]
    fn inline_paths_super_paths_and_child_paths_count() {
        let findings = with(&[
            ("coi/metadata.rs", "pub struct Filter;\nfn f() { crate::push::entries::apply(); }\n"),
            ("worker/mod.rs", "pub mod run;\n"),
            ("worker/run.rs", "use super::super::smtp::queue::now;\n"),
            ("smtp/mod.rs", "pub mod queue;\nuse queue::now;\nfn g() -> super::worker::run::X {}\n"),
        ]);
        let text = findings.to_string();
        assert!(text.contains("src/coi/metadata.rs:2: coi (wing) a wing imports another wing"), "{text}");
        assert!(text.contains("src/worker/run.rs:1: worker (edge) an edge imports another edge"), "{text}");
        assert!(text.contains("src/smtp/mod.rs:3: smtp (edge) an edge imports another edge"), "{text}");
        assert!(text.contains("import cycle between smtp, worker"), "{text}");
        assert!(!text.contains("smtp/mod.rs:2"), "a 2018 path into a child module is not a crossing: {text}");
    }

    #[test]
    fn super_in_an_inline_module_is_the_file() {
        let findings = with(&[(
            "config.rs",
            "use crate::secret::Secret;\nmod inner {\n    use super::super::coi::metadata::Filter;\n    fn f() { super::helper(); }\n}\nfn helper() {}\n",
        )]);
        let text = findings.to_string();
        assert!(text.contains("src/config.rs:3: config (floor) imports upward: coi (wing)"), "{text}");
        assert_eq!(findings.forbidden.len(), 1, "super::helper is config itself: {text}");
    }

    #[test]
    fn a_cycle_between_floor_files_is_found() {
        let findings = with(&[("secret.rs", "pub struct Secret;\nuse crate::config::Config;\n")]);
        assert!(findings.forbidden.is_empty(), "floor files may import each other: {findings}");
        let text = findings.to_string();
        assert!(text.contains("import cycle between config, secret"), "{text}");
        assert!(text.contains("config -> secret at src/config.rs:1"), "{text}");
        assert!(text.contains("secret -> config at src/secret.rs:2"), "{text}");
    }

    #[test]
    fn comments_and_strings_are_not_imports_but_unit_tests_are() {
        let findings = with(&[(
            "store/mod.rs",
            "pub struct Store; // use crate::coi::X;\nconst S: &str = \"crate::coi::metadata\";\nconst R: &str = r#\"use crate::coi::y;\"#;\nfn l<'a>(c: char) -> bool { c == '\"' }\n",
        )]);
        assert!(findings.is_empty(), "{findings}");
        let findings = with(&[(
            "store/mod.rs",
            "pub struct Store;\n#[cfg(test)]\nmod tests {\n    use super::*;\n    fn t() { crate::push::entries::x(); }\n}\n",
        )]);
        let text = findings.to_string();
        assert!(text.contains("src/store/mod.rs:5: store (store) imports upward: push (wing)"), "{text}");
        assert_eq!(findings.forbidden.len(), 1, "`super::*` in the tests is the store itself: {text}");
    }

    #[test]
    fn a_file_off_the_map_is_named() {
        let findings = with(&[("gadget.rs", "pub fn x() {}\n")]);
        assert!(findings.to_string().contains("src/gadget.rs: not on the map"), "{findings}");
    }

    #[test]
    fn use_trees_expand() {
        assert_eq!(
            expand_use_tree("crate::{a::{self, b as c}, d::*, e::f}"),
            vec!["crate::a", "crate::a::b", "crate::d", "crate::e::f"]
        );
    }
}
