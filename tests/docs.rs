//! What the docs say is what the project does (issue 20): the user-facing pages
//! (README.md, docs/*.md, deploy/README.md) are read as a user would paste them.
//!
//! - Every relative link and every `#anchor` in every markdown file of the repository
//!   resolves (GitHub's anchor rules).
//! - Every configuration key the pages name in backticks (`duplicate_streams.store.etcd`)
//!   is a key the configuration reader accepts, and every JSON example, and every plugin
//!   configuration inside a YAML example, passes `callback-guard check-config`.
//! - Every YAML example is Envoy configuration that `envoy --mode validate` accepts, once
//!   wrapped into the smallest bootstrap that fits its level (a bootstrap or some of its
//!   fields, some listener fields, HTTP connection manager fields, an `http_filters` list
//!   or one filter, routes, a route's fields, clusters), with the built module as its code. Kubernetes manifests are not
//!   Envoy configuration and are skipped by name; no such snippet is on these pages today
//!   (`make test-deploy` runs deploy/'s manifests in Envoy). A snippet that is none of
//!   these fails the test, unless the line before its fence says
//!   `<!-- docs-test: skip <why> -->`.
//! - Every callback-guard Wasm filter shown says what the shipped configs say:
//!   `allow_on_headers_stop_iteration`, `failure_policy: FAIL_RELOAD` with
//!   `reload_config`, no `fail_open`; shown inside connection manager fields, with
//!   `http_protocol_options: { accept_http_10: true }`.
//!
//! Other markdown (CHANGELOG.md, BENCHMARKS.md, the lab notes of scripts/ecds/FINDINGS.md,
//! fixture notes) is checked for links only: its snippets record history and placeholders.
//!
//! Under `CI=true` a missing Envoy is a failure; otherwise the Envoy part is skipped
//! loudly (see tests/support).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

// ---- reading markdown ----------------------------------------------------------------

/// A fenced code block.
struct Block {
    file: PathBuf,
    line: usize,
    lang: String,
    text: String,
    /// The reason given by `<!-- docs-test: skip <why> -->` on the line before the fence.
    skip: Option<String>,
}

/// A markdown file split into fenced blocks, headings and the prose between them.
struct Page {
    path: PathBuf,
    blocks: Vec<Block>,
    headings: Vec<String>,
    /// The text outside fenced blocks (with line numbers), one chunk per paragraph-ish run.
    prose: Vec<(usize, String)>,
}

fn read_page(path: &Path) -> Page {
    let text = std::fs::read_to_string(path).unwrap();
    let mut blocks = Vec::new();
    let mut headings = Vec::new();
    let mut prose = Vec::new();
    let mut chunk = String::new();
    let mut chunk_line = 1;
    let mut fence: Option<(String, usize, usize, String, Option<String>)> = None; // marker, indent, line, lang, skip
    let mut body = String::new();
    let mut previous = "";
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some((marker, ind, start, lang, skip)) = &fence {
            if trimmed.starts_with(marker.as_str()) && trimmed.trim_end() == marker.as_str() {
                blocks.push(Block {
                    file: path.to_path_buf(),
                    line: *start,
                    lang: lang.clone(),
                    text: std::mem::take(&mut body),
                    skip: skip.clone(),
                });
                fence = None;
            } else {
                let cut = line.len().min(*ind);
                let keep = if line[..cut].trim().is_empty() {
                    &line[cut..]
                } else {
                    line
                };
                body.push_str(keep);
                body.push('\n');
            }
            previous = line;
            continue;
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            let marker: String = trimmed
                .chars()
                .take_while(|c| *c == trimmed.as_bytes()[0] as char)
                .collect();
            let lang = trimmed[marker.len()..].trim().to_string();
            let skip = previous
                .trim()
                .strip_prefix("<!-- docs-test: skip")
                .and_then(|r| r.strip_suffix("-->"))
                .map(|r| r.trim().to_string());
            fence = Some((marker, indent, n, lang, skip));
            prose.push((chunk_line, std::mem::take(&mut chunk)));
            previous = line;
            continue;
        }
        if indent < 4 && trimmed.starts_with('#') {
            let hashes = trimmed.chars().take_while(|c| *c == '#').count();
            if hashes <= 6 && trimmed[hashes..].starts_with(' ') {
                headings.push(
                    trimmed[hashes..]
                        .trim()
                        .trim_end_matches('#')
                        .trim()
                        .to_string(),
                );
            }
        }
        if line.trim().is_empty() {
            prose.push((chunk_line, std::mem::take(&mut chunk)));
            chunk_line = n + 1;
        } else {
            if chunk.is_empty() {
                chunk_line = n;
            }
            chunk.push_str(line);
            chunk.push('\n');
        }
        previous = line;
    }
    assert!(
        fence.is_none(),
        "{}: a code fence is never closed",
        path.display()
    );
    prose.push((chunk_line, chunk));
    Page {
        path: path.to_path_buf(),
        blocks,
        headings,
        prose,
    }
}

/// Splits prose into text outside inline code and the inline code spans.
fn split_code_spans(text: &str) -> (String, Vec<String>) {
    let chars: Vec<char> = text.chars().collect();
    let mut outside = String::new();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            outside.push(chars[i]);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|c| **c == '`').count();
        // The closing run of exactly as many backticks.
        let mut j = i + run;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let r = chars[j..].iter().take_while(|c| **c == '`').count();
                if r == run {
                    close = Some(j);
                    break;
                }
                j += r;
            } else {
                j += 1;
            }
        }
        match close {
            Some(j) => {
                let span: String = chars[i + run..j].iter().collect();
                spans.push(span.replace('\n', " ").trim().to_string());
                outside.push(' ');
                i = j + run;
            }
            None => {
                outside.extend(&chars[i..i + run]);
                i += run;
            }
        }
    }
    (outside, spans)
}

/// GitHub's anchor of a heading: the rendered text lowercased, punctuation other than
/// `-` and `_` dropped, spaces to `-`; a repeated anchor gets `-1`, `-2`, ...
fn anchors(headings: &[String]) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    for h in headings {
        // [text](link) renders as text; inline code and emphasis marks are punctuation.
        let mut text = String::new();
        let mut rest = h.as_str();
        while let Some(open) = rest.find('[') {
            text.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            match after.find("](") {
                Some(mid) if after[mid + 2..].contains(')') => {
                    text.push_str(&after[..mid]);
                    let close = after[mid + 2..].find(')').unwrap();
                    rest = &after[mid + 2 + close + 1..];
                }
                _ => {
                    text.push('[');
                    rest = after;
                }
            }
        }
        text.push_str(rest);
        let slug: String = text
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        let anchor = if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        };
        *n += 1;
        out.insert(anchor);
    }
    out
}

/// The destinations of `[text](dest)` and `![alt](dest)` links in prose (code removed).
fn link_targets(prose: &str) -> Vec<String> {
    let (outside, _) = split_code_spans(prose);
    let mut out = Vec::new();
    let mut rest = outside.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let end = after
            .find(|c: char| c == ')' || c.is_whitespace())
            .unwrap_or(after.len());
        let dest = after[..end].trim_start_matches('<').trim_end_matches('>');
        if rest[..at].contains('[') && !dest.is_empty() {
            out.push(dest.to_string());
        }
        rest = &after[end..];
    }
    // Reference definitions: `[label]: dest`.
    for line in outside.lines() {
        let t = line.trim_start();
        if let Some(close) = t.strip_prefix('[').and_then(|r| r.find("]: ")) {
            out.push(
                t[close + 4..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            );
        }
    }
    out
}

fn repo() -> PathBuf {
    support::repo()
}

/// Every markdown file of the repository, without build products and virtualenvs.
fn all_markdown() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if entry.file_type().unwrap().is_dir() {
                if name.starts_with('.') || name == "target" || name == "node_modules" {
                    continue;
                }
                walk(&path, out);
            } else if name.ends_with(".md") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo(), &mut out);
    out.sort();
    out
}

/// The pages a user reads: README.md, docs/*.md, deploy/README.md.
fn user_pages() -> Vec<PathBuf> {
    let mut out = vec![repo().join("README.md"), repo().join("deploy/README.md")];
    for entry in std::fs::read_dir(repo().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

// ---- links ------------------------------------------------------------------------------

#[test]
fn every_relative_link_and_anchor_in_the_markdown_resolves() {
    let pages: BTreeMap<PathBuf, Page> = all_markdown()
        .into_iter()
        .map(|p| (p.clone(), read_page(&p)))
        .collect();
    let mut problems = Vec::new();
    let mut checked = 0;
    for page in pages.values() {
        for (line, chunk) in &page.prose {
            for dest in link_targets(chunk) {
                if dest.contains("://") || dest.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path_part, anchor) = match dest.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (dest.as_str(), None),
                };
                let target = if path_part.is_empty() {
                    page.path.clone()
                } else {
                    page.path.parent().unwrap().join(path_part)
                };
                let at = format!("{}:{line}: ({dest})", rel(&page.path));
                if !target.exists() {
                    problems.push(format!("{at}: {} does not exist", rel(&target)));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                let is_md = target.extension().is_some_and(|e| e == "md");
                if !is_md {
                    // Line anchors of source files (#L10, #L10-L20) are GitHub's own.
                    let line_anchor = anchor.strip_prefix('L').is_some_and(|r| {
                        r.split("-L")
                            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    });
                    if !line_anchor {
                        problems.push(format!("{at}: #{anchor} in a file that is not markdown"));
                    }
                    continue;
                }
                let canon = target.canonicalize().unwrap();
                let target_page = pages
                    .iter()
                    .find(|(p, _)| p.canonicalize().unwrap() == canon)
                    .map(|(_, pg)| pg);
                let Some(target_page) = target_page else {
                    problems.push(format!(
                        "{at}: {} is not a markdown file here",
                        rel(&target)
                    ));
                    continue;
                };
                let known = anchors(&target_page.headings);
                if !known.contains(anchor) {
                    problems.push(format!(
                        "{at}: no heading with anchor #{anchor} in {} (anchors: {})",
                        rel(&target),
                        known.iter().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} relative links found: is the link reader broken?"
    );
    assert!(
        problems.is_empty(),
        "{} of {checked} relative links do not resolve:\n{}",
        problems.len(),
        problems.join("\n")
    );
    eprintln!("{checked} relative links and anchors resolve");
}

#[test]
fn anchors_follow_github_rules() {
    let h = |v: &[&str]| anchors(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert!(h(&["The OCI image (`make oci`)"]).contains("the-oci-image-make-oci"));
    assert!(h(&["Sender checks (`callback_auth`)"]).contains("sender-checks-callback_auth"));
    assert!(h(&["Why"]).contains("why"));
    let dup = h(&["Why", "Why", "Why"]);
    assert!(dup.contains("why") && dup.contains("why-1") && dup.contains("why-2"));
    assert!(h(&["Envoy Gateway (>= 1.6, Envoy 1.36)"]).contains("envoy-gateway--16-envoy-136"));
    assert!(h(&["A [link](x.md) here"]).contains("a-link-here"));
}

#[test]
fn the_markdown_reader_finds_links_and_code() {
    let (outside, spans) = split_code_spans("see `a.b` and ``x ` y`` [t](u.md#v) `[no](link)`");
    assert_eq!(spans, ["a.b", "x ` y", "[no](link)"]);
    assert!(!outside.contains("no"));
    assert_eq!(
        link_targets("a [t](u.md#v) b `[c](d)` [e]\n(f) ![i](img.png)"),
        ["u.md#v", "img.png"]
    );
}

// ---- configuration keys and JSON examples -----------------------------------------

/// A configuration that sets every key the reader knows; check-config must accept it,
/// which proves each of these keys exists (unknown keys are refused). A key the docs
/// name that is not here fails `every_configuration_key_named_in_the_docs_exists`: if the
/// reader does know it, add it here.
const EVERY_KEY: &str = r#"{
  "max_body_bytes": 65536,
  "apps": ["live"],
  "formats": ["kls_v2", "kls_v1", "nginx_rtmp"],
  "push_auth": {
    "scheme": "hmac_sha256",
    "clock_skew_s": 30,
    "keys": [
      {"id": "k1", "secret": "0123456789abcdef0123", "apps": ["live"], "domains": ["push.example.com"]},
      {"id": "k2", "secret_env": "DOCS_TEST_KEY"}
    ]
  },
  "play_auth": {
    "scheme": "ks_md5",
    "clock_skew_s": 30,
    "keys": [{"id": "v1", "secret": "play0key1", "apps": ["live"], "domains": ["push.example.com"]}]
  },
  "callback_auth": {
    "allow_cidrs": ["127.0.0.0/8"],
    "trusted_xff_hops": 1,
    "shared_key": {"query_param": "auth_key", "header": "x-cdn-key", "keys": [{"id": "cdn", "secret": "cdn-key-0123456789"}]},
    "webhook_signature": {"keys": [{"id": "wh", "secret": "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}], "tolerance_s": 300}
  },
  "duplicate_streams": {
    "reject": true,
    "ttl_s": 86400,
    "max_streams": 100000,
    "store": {"etcd": {"cluster": "etcd", "key_prefix": "/callback-guard/", "timeout_ms": 1500, "authority": "etcd"}}
  },
  "max_event_age_s": 600,
  "mode": "enforce",
  "filter_state_mark": true
}"#;

/// Every key path of a JSON value (array indexes dropped), and each of their prefixes.
fn key_paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(p.clone());
                key_paths(v, &p, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| key_paths(v, prefix, out)),
        _ => {}
    }
}

/// The secret_env variables a plugin configuration names, each with a value of the
/// shape its place needs (webhook secrets are `whsec_<base64>`).
fn secret_envs(v: &Value, webhook: bool, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "secret_env" {
                    if let Some(name) = v.as_str() {
                        // One value per variable (play keys must differ from push
                        // keys): its name's letters and digits, 16 to 32 of them, a
                        // key for either scheme.
                        let value = if webhook {
                            "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_string()
                        } else {
                            let alnum: String =
                                name.chars().filter(char::is_ascii_alphanumeric).collect();
                            format!("{alnum:0<16}").chars().take(32).collect()
                        };
                        out.insert(name.to_string(), value);
                    }
                }
                secret_envs(v, webhook || k == "webhook_signature", out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| secret_envs(v, webhook, out)),
        _ => {}
    }
}

/// `callback-guard check-config` on a plugin configuration, with every secret_env set.
fn check_config(config: &Value, what: &str) -> Result<String, String> {
    let dir = support::TempDir::new("docs-config");
    let file = dir.0.join("config.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let mut env = BTreeMap::new();
    secret_envs(config, false, &mut env);
    let out = Command::new(env!("CARGO_BIN_EXE_callback-guard"))
        .arg("check-config")
        .arg(&file)
        .envs(&env)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{what}: check-config: {}", text.trim()))
    }
}

fn known_keys() -> BTreeSet<String> {
    let every: Value = serde_json::from_str(EVERY_KEY).unwrap();
    check_config(&every, "EVERY_KEY").unwrap();
    let mut keys = BTreeSet::new();
    key_paths(&every, "", &mut keys);
    keys
}

/// A dotted name in backticks that looks like a key path: `a.b`, `a.keys[1].c`.
fn dotted_name(span: &str) -> Option<Vec<String>> {
    let segs: Vec<String> = span
        .split('.')
        .map(|s| match s.find('[') {
            Some(i)
                if s.ends_with(']')
                    && s[i + 1..s.len() - 1].bytes().all(|b| b.is_ascii_digit()) =>
            {
                s[..i].to_string()
            }
            _ => s.to_string(),
        })
        .collect();
    let word = |s: &String| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && s.as_bytes()[0].is_ascii_lowercase()
    };
    (segs.len() >= 2 && segs.iter().all(word)).then_some(segs)
}

/// Problems with the key names a page writes in backticks. A name counts as a
/// configuration key when one of its segments is a top-level key (`duplicate_streams.x`,
/// `config.callback_auth.x` in a manifest: checked from that segment on), or when it
/// starts with the name of a nested key that holds keys (`store.etcd.cluster`,
/// `keys.secret_env`: it must be the tail of a known path). Other dotted names (`stats_config.stats_tags`, stat
/// names) are Envoy's.
fn key_problems(page: &Page, known: &BTreeSet<String>) -> (usize, Vec<String>) {
    let top: BTreeSet<&str> = known
        .iter()
        .filter(|k| !k.contains('.'))
        .map(|k| k.as_str())
        .collect();
    // Nested keys that hold keys of their own (`store`, `etcd`, `keys`, `shared_key`):
    // a leaf name such as `id` is too common a word to tell a key path by.
    let nested: BTreeSet<&str> = known
        .iter()
        .filter_map(|k| k.rsplit_once('.').map(|(parent, _)| parent))
        .flat_map(|parent| parent.split('.'))
        .filter(|s| !top.contains(s))
        .collect();
    let mut problems = Vec::new();
    let mut checked = 0;
    let mut spans: Vec<(usize, String)> = Vec::new();
    for (line, chunk) in &page.prose {
        spans.extend(split_code_spans(chunk).1.into_iter().map(|s| (*line, s)));
    }
    for (line, span) in spans {
        let Some(segs) = dotted_name(&span) else {
            continue;
        };
        let at = format!("{}:{line}: `{span}`", rel(&page.path));
        if let Some(i) = segs.iter().position(|s| top.contains(s.as_str())) {
            checked += 1;
            let path = segs[i..].join(".");
            if !known.contains(&path) {
                problems.push(format!("{at}: `{path}` is not a configuration key"));
            }
        } else if nested.contains(segs[0].as_str()) {
            checked += 1;
            let tail = format!(".{}", segs.join("."));
            if !known.iter().any(|k| k.ends_with(&tail)) {
                problems.push(format!(
                    "{at}: no configuration key ends in `{}`",
                    &tail[1..]
                ));
            }
        }
    }
    (checked, problems)
}

#[test]
fn every_configuration_key_named_in_the_docs_exists() {
    let known = known_keys();
    let mut problems = Vec::new();
    let mut checked = 0;
    for path in user_pages() {
        let (n, p) = key_problems(&read_page(&path), &known);
        checked += n;
        problems.extend(p);
    }
    assert!(
        problems.is_empty(),
        "{} of {checked} configuration keys named in the docs do not exist (the keys: {}):\n{}",
        problems.len(),
        known.iter().cloned().collect::<Vec<_>>().join(", "),
        problems.join("\n")
    );
    assert!(
        checked >= 20,
        "only {checked} key names found: is the reader broken?"
    );
    eprintln!("{checked} configuration key names in the docs exist");
}

#[test]
fn a_misspelt_key_in_a_page_is_caught() {
    // The defect of issue 20: docs/ecds.md named `duplicate_streams.etcd`.
    let known = known_keys();
    let dir = support::TempDir::new("docs-keys");
    let md = dir.0.join("page.md");
    std::fs::write(
        &md,
        "the etcd registry (`duplicate_streams.etcd`) and `store.etcd.clusters`,\n\
         but `duplicate_streams.store.etcd`, `push_auth.keys[1].secret_env`, `store.etcd.cluster`,\n\
         `config.callback_auth.allow_cidrs` and `stats_config.stats_tags` are fine\n\n\
         ```sh\n`duplicate_streams.nope` in code is not prose\n```\n",
    )
    .unwrap();
    let (checked, problems) = key_problems(&read_page(&md), &known);
    assert_eq!(checked, 6, "{problems:?}");
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("`duplicate_streams.etcd` is not a configuration key"));
    assert!(problems[1].contains("`store.etcd.clusters`"));
}

/// The plugin configuration of a JSON block: an object, or members of one
/// (`"duplicate_streams": {...}`).
fn json_block(block: &Block) -> Result<Value, String> {
    let text = block.text.trim();
    let text = if text.starts_with('"') {
        format!("{{{text}}}")
    } else {
        text.to_string()
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

#[test]
fn every_json_example_and_plugin_configuration_in_the_docs_passes_check_config() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for path in user_pages() {
        let page = read_page(&path);
        for block in &page.blocks {
            let at = format!("{}:{}", rel(&block.file), block.line);
            if block.skip.is_some() {
                continue;
            }
            let configs: Vec<Value> = match block.lang.as_str() {
                "json" => match json_block(block) {
                    Ok(v) => vec![v],
                    Err(e) => {
                        problems.push(format!("{at}: {e}"));
                        continue;
                    }
                },
                "yaml" => match serde_yaml::from_str::<Value>(&block.text) {
                    Ok(v) => wasm_filters(&v)
                        .into_iter()
                        .filter_map(|f| {
                            f["config"]["configuration"]["value"]
                                .as_str()
                                .map(str::to_string)
                        })
                        .map(|s| serde_json::from_str(&s).unwrap_or(Value::String(s)))
                        .collect(),
                    Err(_) => continue, // reported by the Envoy test
                },
                _ => continue,
            };
            for config in configs {
                checked += 1;
                if let Err(e) = check_config(&config, &at) {
                    problems.push(e);
                }
            }
        }
    }
    assert!(checked >= 5, "only {checked} configurations found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    eprintln!("{checked} plugin configurations in the docs pass check-config");
}

// ---- YAML examples in Envoy ----------------------------------------------------------

/// Every `envoy.extensions.filters.http.wasm.v3.Wasm` typed_config in a value.
fn wasm_filters(v: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<Value>) {
        match v {
            Value::Object(m) => {
                if m.get("@type").and_then(Value::as_str)
                    == Some("type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm")
                {
                    out.push(v.clone());
                }
                m.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

/// What level of Envoy configuration a snippet is.
#[derive(Debug, PartialEq)]
enum Kind {
    Bootstrap,
    /// Some fields of a bootstrap (`overload_manager:`, `stats_config:`).
    BootstrapFields,
    /// Some fields of a listener (`per_connection_buffer_limit_bytes:`).
    ListenerFields,
    /// Fields of the HTTP connection manager (`http_filters:` and friends).
    HcmFields,
    /// Entries of `http_filters`.
    HttpFilters,
    /// Routes of a virtual host.
    Routes,
    /// Fields of one route (`typed_per_filter_config:`).
    RouteFields,
    Clusters,
    /// Not Envoy configuration: skipped, with the reason.
    NotEnvoy(&'static str),
}

/// Fields of envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.
const HCM_FIELDS: &[&str] = &[
    "codec_type",
    "stat_prefix",
    "rds",
    "route_config",
    "scoped_routes",
    "http_filters",
    "add_user_agent",
    "tracing",
    "common_http_protocol_options",
    "http1_safe_max_connection_duration",
    "http_protocol_options",
    "http2_protocol_options",
    "http3_protocol_options",
    "server_name",
    "server_header_transformation",
    "scheme_header_transformation",
    "max_request_headers_kb",
    "stream_idle_timeout",
    "request_timeout",
    "request_headers_timeout",
    "drain_timeout",
    "delayed_close_timeout",
    "access_log",
    "access_log_options",
    "use_remote_address",
    "xff_num_trusted_hops",
    "original_ip_detection_extensions",
    "early_header_mutation_extensions",
    "internal_address_config",
    "skip_xff_append",
    "via",
    "generate_request_id",
    "preserve_external_request_id",
    "always_set_request_id_in_response",
    "forward_client_cert_details",
    "set_current_client_cert_details",
    "proxy_100_continue",
    "represent_ipv4_remote_address_as_ipv4_mapped_ipv6",
    "upgrade_configs",
    "normalize_path",
    "merge_slashes",
    "path_with_escaped_slashes_action",
    "request_id_extension",
    "local_reply_config",
    "strip_matching_host_port",
    "strip_any_host_port",
    "stream_error_on_invalid_http_message",
    "strip_trailing_host_dot",
    "proxy_status_config",
    "typed_header_validation_config",
    "append_x_forwarded_port",
    "append_local_overload",
    "add_proxy_protocol_connection_state",
];

/// Fields of envoy.config.listener.v3.Listener.
const LISTENER_FIELDS: &[&str] = &[
    "name",
    "address",
    "additional_addresses",
    "stat_prefix",
    "filter_chains",
    "filter_chain_matcher",
    "use_original_dst",
    "default_filter_chain",
    "per_connection_buffer_limit_bytes",
    "metadata",
    "drain_type",
    "listener_filters",
    "listener_filters_timeout",
    "continue_on_listener_filters_timeout",
    "transparent",
    "freebind",
    "socket_options",
    "tcp_fast_open_queue_length",
    "traffic_direction",
    "udp_listener_config",
    "connection_balance_config",
    "enable_reuse_port",
    "access_log",
    "tcp_backlog_size",
    "max_connections_to_accept_per_socket_event",
    "bind_to_port",
    "enable_mptcp",
    "ignore_global_conn_limit",
    "bypass_overload_manager",
];

/// Fields of envoy.config.bootstrap.v3.Bootstrap.
const BOOTSTRAP_FIELDS: &[&str] = &[
    "node",
    "static_resources",
    "dynamic_resources",
    "cluster_manager",
    "stats_sinks",
    "stats_config",
    "stats_flush_interval",
    "watchdogs",
    "tracing",
    "layered_runtime",
    "admin",
    "overload_manager",
    "enable_dispatcher_stats",
    "header_prefix",
    "bootstrap_extensions",
    "fatal_actions",
    "default_regex_engine",
    "application_log_config",
];

fn kind(v: &Value) -> Option<Kind> {
    let is_filter = |f: &Value| {
        f.get("name").is_some()
            && (f.get("typed_config").is_some() || f.get("config_discovery").is_some())
    };
    match v {
        Value::Object(m) if m.contains_key("apiVersion") && m.contains_key("kind") => Some(
            Kind::NotEnvoy("a Kubernetes manifest (make test-deploy runs deploy/'s in Envoy)"),
        ),
        Value::Object(m) if m.contains_key("static_resources") => Some(Kind::Bootstrap),
        Value::Object(m) if m.keys().all(|k| k == "typed_per_filter_config") && !m.is_empty() => {
            Some(Kind::RouteFields)
        }
        Value::Object(_) if is_filter(v) => Some(Kind::HttpFilters),
        Value::Object(m) if m.get("load_assignment").is_some() => Some(Kind::Clusters),
        Value::Object(m) if !m.is_empty() && m.keys().all(|k| HCM_FIELDS.contains(&k.as_str())) => {
            Some(Kind::HcmFields)
        }
        Value::Object(m)
            if !m.is_empty() && m.keys().all(|k| LISTENER_FIELDS.contains(&k.as_str())) =>
        {
            Some(Kind::ListenerFields)
        }
        Value::Object(m)
            if !m.is_empty() && m.keys().all(|k| BOOTSTRAP_FIELDS.contains(&k.as_str())) =>
        {
            Some(Kind::BootstrapFields)
        }
        Value::Array(a) if !a.is_empty() && a.iter().all(is_filter) => Some(Kind::HttpFilters),
        Value::Array(a) if !a.is_empty() && a.iter().all(|r| r.get("match").is_some()) => {
            Some(Kind::Routes)
        }
        Value::Array(a)
            if !a.is_empty()
                && a.iter()
                    .all(|c| c.get("name").is_some() && c.get("load_assignment").is_some()) =>
        {
            Some(Kind::Clusters)
        }
        _ => None,
    }
}

/// Every http filter name in a value's `typed_per_filter_config`s.
fn per_filter_names(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(p)) = m.get("typed_per_filter_config") {
                out.extend(p.keys().cloned());
            }
            m.values().for_each(|v| per_filter_names(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| per_filter_names(v, out)),
        _ => {}
    }
}

fn contains_key(v: &Value, key: &str) -> bool {
    match v {
        Value::Object(m) => m.contains_key(key) || m.values().any(|v| contains_key(v, key)),
        Value::Array(a) => a.iter().any(|v| contains_key(v, key)),
        _ => false,
    }
}

/// Points every `code.local.filename` at the built module.
fn use_module(v: &mut Value, wasm: &str) {
    match v {
        Value::Object(m) => {
            if let Some(local) = m.get_mut("local").and_then(|l| l.as_object_mut()) {
                if local.contains_key("filename") {
                    local.insert("filename".into(), wasm.into());
                }
            }
            m.values_mut().for_each(|v| use_module(v, wasm));
        }
        Value::Array(a) => a.iter_mut().for_each(|v| use_module(v, wasm)),
        _ => {}
    }
}

/// The smallest bootstrap around a snippet: one listener whose connection manager has
/// the shipped filter chain (callback-guard, then the router) and a route to the
/// upstream, unless the snippet brings its own level; a filter the snippet's routes
/// name but the chain lacks is added, disabled, as a stand-in.
fn bootstrap(snippet: &Value, kind: &Kind, wasm: &str) -> Value {
    let router = json!({"name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}});
    let mut filters = vec![support::shipped_guard_filter(), router.clone()];
    let mut routes = vec![json!({"match": {"prefix": "/"}, "route": {"cluster": "upstream"}})];
    let mut clusters = vec![
        json!({"name": "upstream", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}}}]}]}}),
    ];
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "docs",
    });
    match kind {
        Kind::Bootstrap => {
            let mut b = snippet.clone();
            use_module(&mut b, wasm);
            return b;
        }
        Kind::HcmFields => {
            for (k, v) in snippet.as_object().unwrap() {
                hcm[k] = v.clone();
            }
            if let Some(list) = snippet["http_filters"].as_array() {
                filters = list.clone();
            }
        }
        Kind::HttpFilters => {
            let list = match snippet {
                Value::Array(a) => a.clone(),
                one => vec![one.clone()],
            };
            let has_router = list
                .iter()
                .any(|f| f["name"] == "envoy.filters.http.router");
            filters = if has_router {
                list
            } else {
                // One filter or a list without the router: after callback-guard.
                let mut f = vec![support::shipped_guard_filter()];
                f.extend(list);
                f.push(router.clone());
                f
            };
        }
        Kind::Routes => routes = snippet.as_array().unwrap().clone(),
        Kind::RouteFields => {
            let mut r = routes[0].clone();
            for (k, v) in snippet.as_object().unwrap() {
                r[k] = v.clone();
            }
            routes = vec![r];
        }
        Kind::Clusters => match snippet {
            Value::Array(a) => clusters.extend(a.iter().cloned()),
            one => clusters.push(one.clone()),
        },
        Kind::BootstrapFields | Kind::ListenerFields => {}
        Kind::NotEnvoy(_) => unreachable!(),
    }
    // Filters the routes disable that the chain does not have: stand-ins that pass.
    let mut named = BTreeSet::new();
    per_filter_names(&json!(routes), &mut named);
    let names: BTreeSet<String> = filters
        .iter()
        .filter_map(|f| f["name"].as_str().map(String::from))
        .collect();
    for missing in named.difference(&names) {
        let at = filters.len() - 1;
        filters.insert(
            at,
            json!({"name": missing, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"}}),
        );
    }
    if hcm.get("route_config").is_none() {
        hcm["route_config"] =
            json!({"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]});
    }
    hcm["http_filters"] = json!(filters);
    let mut b = json!({
        "static_resources": {
            "listeners": [{"name": "docs", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}],
            "clusters": clusters,
        }
    });
    let fields = snippet.as_object();
    match (kind, fields) {
        (Kind::ListenerFields, Some(m)) => {
            for (k, v) in m {
                b["static_resources"]["listeners"][0][k] = v.clone();
            }
        }
        (Kind::BootstrapFields, Some(m)) => {
            for (k, v) in m {
                b[k] = v.clone();
            }
        }
        _ => {}
    }
    if contains_key(&b, "ads") {
        b["static_resources"]["clusters"].as_array_mut().unwrap().push(json!({"name": "xds", "type": "STATIC",
            "connect_timeout": "1s", "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 18000}}}}]}]}}));
        b["node"] = json!({"id": "docs", "cluster": "docs"});
        b["dynamic_resources"] = json!({"ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]}});
    }
    use_module(&mut b, wasm);
    b
}

/// The YAML snippets of the user pages, each with its kind (or the reason it has none).
fn yaml_snippets() -> Vec<(String, Value, Result<Kind, String>)> {
    let mut out = Vec::new();
    for path in user_pages() {
        for block in read_page(&path).blocks {
            if block.lang != "yaml" {
                continue;
            }
            let at = format!("{}:{}", rel(&block.file), block.line);
            if let Some(why) = &block.skip {
                eprintln!("{at}: skipped: {why}");
                continue;
            }
            match serde_yaml::from_str::<Value>(&block.text) {
                Ok(v) => {
                    let k = kind(&v).ok_or_else(|| {
                        "of no known level of Envoy configuration; mark it `<!-- docs-test: skip <why> -->` if it is not Envoy's".to_string()
                    });
                    out.push((at, v, k));
                }
                Err(e) => out.push((at, Value::Null, Err(format!("not YAML: {e}")))),
            }
        }
    }
    out
}

#[test]
fn every_callback_guard_filter_in_the_docs_is_the_shipped_one() {
    let mut problems = Vec::new();
    let mut filters = 0;
    for (at, v, kind) in yaml_snippets() {
        for w in wasm_filters(&v) {
            filters += 1;
            let c = &w["config"];
            if c["allow_on_headers_stop_iteration"] != true {
                problems.push(format!("{at}: no allow_on_headers_stop_iteration: true"));
            }
            if c["failure_policy"] != "FAIL_RELOAD" || !c["reload_config"].is_object() {
                problems.push(format!(
                    "{at}: not failure_policy: FAIL_RELOAD with reload_config"
                ));
            }
            if c.get("fail_open").is_some() {
                problems.push(format!(
                    "{at}: fail_open (failure_policy decides; envoy/envoy.yaml has none)"
                ));
            }
            if kind == Ok(Kind::HcmFields) && v["http_protocol_options"]["accept_http_10"] != true {
                problems.push(format!(
                    "{at}: the connection manager fields lack http_protocol_options: {{ accept_http_10: true }} \
                     (KLS old-version callbacks are HTTP/1.0: Envoy answers 426 without it)"
                ));
            }
        }
    }
    assert!(
        filters >= 2,
        "only {filters} callback-guard filters found in the docs"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_envoy_yaml_snippet_in_the_docs_validates_in_envoy() {
    let snippets = yaml_snippets();
    let mut problems: Vec<String> = snippets
        .iter()
        .filter_map(|(at, _, k)| k.as_ref().err().map(|e| format!("{at}: {e}")))
        .collect();
    let Some(envoy) = support::envoy_bin() else {
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        return;
    };
    let wasm = support::wasm_path().canonicalize().unwrap();
    let dir = support::TempDir::new("docs-envoy");
    let mut runs = Vec::new();
    for (i, (at, v, k)) in snippets.iter().enumerate() {
        let Ok(k) = k else { continue };
        if let Kind::NotEnvoy(why) = k {
            eprintln!("{at}: not Envoy configuration, skipped: {why}");
            continue;
        }
        let b = bootstrap(v, k, wasm.to_str().unwrap());
        let file = dir.0.join(format!("snippet-{i}.json"));
        std::fs::write(&file, serde_json::to_string_pretty(&b).unwrap()).unwrap();
        let mut env = BTreeMap::new();
        for w in wasm_filters(&b) {
            if let Some(s) = w["config"]["configuration"]["value"].as_str() {
                if let Ok(c) = serde_json::from_str::<Value>(s) {
                    secret_envs(&c, false, &mut env);
                }
            }
        }
        let child = Command::new(&envoy)
            .args([
                "--mode",
                "validate",
                "-l",
                "error",
                "--disable-hot-restart",
                "-c",
            ])
            .arg(&file)
            .envs(&env)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        runs.push((at.clone(), format!("{k:?}"), file, child));
    }
    let mut validated = 0;
    for (at, k, file, child) in runs {
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() && text.contains("OK") {
            validated += 1;
            eprintln!("{at}: {k}: envoy --mode validate OK");
        } else {
            problems.push(format!(
                "{at} ({k}, wrapped as {}): envoy --mode validate: {}",
                file.display(),
                text.trim()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert!(validated >= 5, "only {validated} snippets validated");
}

#[test]
fn snippets_are_told_apart_by_level() {
    let y = |s: &str| kind(&serde_yaml::from_str(s).unwrap());
    assert_eq!(y("static_resources: {}"), Some(Kind::Bootstrap));
    assert_eq!(
        y("http_protocol_options: {}\nhttp_filters: []"),
        Some(Kind::HcmFields)
    );
    assert_eq!(y("- name: a\n  typed_config: {}"), Some(Kind::HttpFilters));
    assert_eq!(y("name: a\ntyped_config: {}"), Some(Kind::HttpFilters));
    assert_eq!(y("- match: { prefix: / }"), Some(Kind::Routes));
    assert_eq!(y("typed_per_filter_config: {}"), Some(Kind::RouteFields));
    assert_eq!(y("- name: c\n  load_assignment: {}"), Some(Kind::Clusters));
    assert!(matches!(
        y("apiVersion: v1\nkind: Secret"),
        Some(Kind::NotEnvoy(_))
    ));
    assert_eq!(y("stream_idle_timeout: 30s"), Some(Kind::HcmFields));
    assert_eq!(
        y("per_connection_buffer_limit_bytes: 32768"),
        Some(Kind::ListenerFields)
    );
    assert_eq!(y("overload_manager: {}"), Some(Kind::BootstrapFields));
    assert_eq!(y("name: c\nload_assignment: {}"), Some(Kind::Clusters));
    assert_eq!(y("services: { envoy: {} }"), None);
}

/// Prose without its links (`[text](dest)`): a quote inside a link's text is linked.
fn strip_links(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(mid) = rest.find("](") {
        match (rest[..mid].rfind('['), rest[mid..].find(')')) {
            (Some(open), Some(close)) => {
                out.push_str(&rest[..open]);
                rest = &rest[mid + close + 1..];
            }
            _ => {
                out.push_str(&rest[..mid + 2]);
                rest = &rest[mid + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A heading's text as a reader quotes it: inline code marks dropped.
fn plain(heading: &str) -> String {
    heading.replace('`', "").trim().to_lowercase()
}

/// Problems with a page that names a section of another page in quotes ("Production
/// notes") instead of linking it.
fn unlinked_sections(page: &Page, others: &BTreeMap<PathBuf, BTreeSet<String>>) -> Vec<String> {
    let own: BTreeSet<String> = page.headings.iter().map(|h| plain(h)).collect();
    let mut problems = Vec::new();
    for (line, chunk) in &page.prose {
        let (outside, _) = split_code_spans(chunk);
        let outside = strip_links(&outside);
        let mut parts = outside.split('"');
        parts.next();
        while let (Some(quoted), Some(_)) = (parts.next(), parts.next()) {
            let q = quoted.replace('\n', " ").trim().to_lowercase();
            if q.is_empty() || own.contains(&q) {
                continue;
            }
            for (path, headings) in others {
                if path != &page.path && headings.contains(&q) {
                    problems.push(format!(
                        "{}:{line}: \"{quoted}\" is a section of {}: link it",
                        rel(&page.path),
                        rel(path)
                    ));
                }
            }
        }
    }
    problems
}

#[test]
fn sections_of_other_pages_are_linked_not_quoted() {
    let headings: BTreeMap<PathBuf, BTreeSet<String>> = all_markdown()
        .into_iter()
        .map(|p| {
            let h = read_page(&p).headings.iter().map(|h| plain(h)).collect();
            (p, h)
        })
        .collect();
    let mut problems = Vec::new();
    for path in user_pages() {
        problems.extend(unlinked_sections(&read_page(&path), &headings));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The defect of issue 20: configuration.md quoted "Production notes" of operations.md.
    let dir = support::TempDir::new("docs-quoted");
    let md = dir.0.join("page.md");
    std::fs::write(&md, "# Page\n\n## Here\n\nsee \"Production notes\", \"Here\" and [\"Production notes\"](x.md)\n").unwrap();
    let mut others = BTreeMap::new();
    others.insert(
        dir.0.join("other.md"),
        BTreeSet::from(["production notes".to_string()]),
    );
    let found = unlinked_sections(&read_page(&md), &others);
    assert_eq!(found.len(), 1, "{found:?}");
}

// ---- make targets and paths the docs name ---------------------------------------------

/// The targets of the Makefile (rules and .PHONY names).
fn make_targets() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("Makefile")).unwrap();
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with('\t') || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix(".PHONY:") {
            out.extend(rest.split_whitespace().map(String::from));
        } else if let Some((head, _)) = line.split_once(':') {
            if !head.contains('=') && !line.contains(":=") && !head.contains('$') {
                out.extend(head.split_whitespace().map(String::from));
            }
        }
    }
    out
}

/// `make a b VAR=x` in a text: the targets named (variables and options dropped).
fn make_invocations(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == '`' || c == '(' || c == ')' || c == ';')
            .filter(|w| !w.is_empty())
            .collect();
        for (i, w) in words.iter().enumerate() {
            if *w != "make" {
                continue;
            }
            for t in &words[i + 1..] {
                let t = t.trim_end_matches([',', '.', ':']);
                if t.contains('=') || t.starts_with('-') || t == "\\" {
                    continue;
                }
                if t.is_empty()
                    || !t
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                {
                    break;
                }
                out.push(t.to_string());
            }
        }
    }
    out
}

#[test]
fn every_make_target_named_in_the_docs_exists() {
    let targets = make_targets();
    assert!(
        targets.contains("test") && targets.contains("docker-up"),
        "{targets:?}"
    );
    let mut problems = Vec::new();
    let mut checked = 0;
    for path in user_pages() {
        let page = read_page(&path);
        let mut texts: Vec<(usize, String)> = Vec::new();
        for (line, chunk) in &page.prose {
            texts.extend(split_code_spans(chunk).1.into_iter().map(|s| (*line, s)));
        }
        texts.extend(
            page.blocks
                .iter()
                .filter(|b| b.lang == "sh")
                .map(|b| (b.line, b.text.clone())),
        );
        for (line, text) in texts {
            for t in make_invocations(&text) {
                checked += 1;
                if !targets.contains(&t) {
                    problems.push(format!("{}:{line}: `make {t}`: no such target", rel(&path)));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        checked >= 30,
        "only {checked} make targets named in the docs"
    );
    eprintln!("{checked} make targets named in the docs exist");
}

/// Files of the repository that the docs name in backticks (`scripts/docker.sh`); the
/// generated ones (under target/, the Docker configs) are made by the build.
#[test]
fn every_repository_path_named_in_the_docs_exists() {
    let roots = [
        "src/", "tests/", "scripts/", "envoy/", "deploy/", "docs/", "bench/", "benches/", "fuzz/",
        ".ci/",
    ];
    let generated = |p: &str| {
        p.starts_with("envoy/envoy.docker")
            || p.starts_with("envoy/envoy.fleet.docker")
            || p.contains('<')
    };
    let mut problems = Vec::new();
    let mut checked = 0;
    for path in user_pages() {
        let page = read_page(&path);
        for (line, chunk) in &page.prose {
            for span in split_code_spans(chunk).1 {
                let p = span.trim_end_matches([',', '.', ':']);
                if p.contains(char::is_whitespace)
                    || !roots.iter().any(|r| p.starts_with(r))
                    || generated(p)
                {
                    continue;
                }
                let p = p.split_once(['#', '*']).map_or(p, |(a, _)| a);
                checked += 1;
                if !repo().join(p).exists() {
                    problems.push(format!("{}:{line}: `{span}` does not exist", rel(&path)));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked >= 30, "only {checked} paths named in the docs");
    eprintln!("{checked} repository paths named in the docs exist");
}

#[test]
fn make_invocations_are_read_as_a_shell_would() {
    assert_eq!(
        make_invocations("make wasm bins envoy   # the filter\n(`make docker-up X=1 -j2`)"),
        ["wasm", "bins", "envoy", "docker-up"]
    );
    assert_eq!(
        make_invocations("run `make ... DOCKER_SUBNET=x`"),
        Vec::<String>::new()
    );
    assert!(!make_targets().contains("no-such-target"));
}

/// Whether a line runs a bare `envoy -…` (not `.venv/bin/envoy`), anywhere in it.
fn bare_envoy(line: &str) -> bool {
    line.match_indices("envoy ").any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + "envoy ".len()..].trim_start();
        before.is_none_or(|c| c.is_whitespace() || c == '`' || c == '(') && after.starts_with('-')
    })
}

#[test]
fn no_pasted_command_expects_envoy_on_the_path() {
    // After `make`, Envoy is .venv/bin/envoy (issue 20: "envoy -c ..." failed as pasted).
    let mut problems = Vec::new();
    for path in user_pages() {
        let page = read_page(&path);
        for b in page.blocks.iter().filter(|b| b.lang == "sh") {
            for (i, line) in b.text.lines().enumerate() {
                if bare_envoy(line) {
                    problems.push(format!(
                        "{}:{}: `{}`: envoy is .venv/bin/envoy",
                        rel(&path),
                        b.line + 1 + i,
                        line.trim()
                    ));
                }
            }
        }
    }
    // The start commands in the shipped configs' header comments.
    for name in [
        "envoy/envoy.yaml",
        "envoy/nginx-rtmp.yaml",
        "envoy/srs.yaml",
    ] {
        let text = std::fs::read_to_string(repo().join(name)).unwrap();
        for (i, line) in text.lines().enumerate() {
            let Some(comment) = line.strip_prefix('#') else {
                continue;
            };
            if bare_envoy(comment) {
                problems.push(format!(
                    "{name}:{}: `{}`: envoy is .venv/bin/envoy",
                    i + 1,
                    comment.trim()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(bare_envoy("CALLBACK_GUARD_PUSH_KEY=x envoy -c y"));
    assert!(bare_envoy(
        "# push key in the environment:  K=... envoy -c envoy/envoy.yaml"
    ));
    assert!(!bare_envoy("K=x .venv/bin/envoy -c y"));
    assert!(!bare_envoy("the envoy binary"));
}
