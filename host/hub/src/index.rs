//! Talking to a Python "simple" package index (PEP 503 HTML and PEP 691 JSON).
//!
//! Only the subset needed to locate one pinned wheel: list the project's files,
//! resolve their URLs and read their advertised sha256.

use std::collections::HashMap;

use serde::Deserialize;
use ureq::{Agent, ResponseExt};

use crate::HubError;

/// pip's own Accept header: prefer JSON, but let HTML-only mirrors answer too.
const ACCEPT: &str = "application/vnd.pypi.simple.v1+json, \
                      application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";

/// One downloadable file as listed by the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexFile {
    pub filename: String,
    /// Absolute URL (already resolved against the index page).
    pub url: String,
    /// Lower-case hex, when the index advertises one.
    pub sha256: Option<String>,
    pub size: Option<u64>,
}

/// `{index}/{normalized-name}/`, whether or not the base has a trailing slash.
pub(crate) fn project_url(index: &str, package: &str) -> String {
    format!("{}/{}/", index.trim_end_matches('/'), normalize(package))
}

/// PEP 503 name normalization: lower case, runs of `-_.` become one `-`.
fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// GETs the project page and parses whichever format the server chose.
pub(crate) fn list_files(agent: &Agent, page: &str) -> Result<Vec<IndexFile>, HubError> {
    let mut resp = agent
        .get(page)
        .header("Accept", ACCEPT)
        .call()
        .map_err(|err| HubError::Unreachable { url: page.to_owned(), err })?;
    if !resp.status().is_success() {
        return Err(HubError::HttpStatus { url: page.to_owned(), status: resp.status().as_u16() });
    }
    // Relative links are relative to where we ended up, not where we started.
    let base = resp.get_uri().to_string();
    let mime = resp.body().mime_type().unwrap_or("").to_ascii_lowercase();
    let body = resp.body_mut().read_to_string().map_err(|err| HubError::Unreachable { url: page.to_owned(), err })?;
    parse(&base, &mime, &body)
}

/// Dispatches on content type; a body that looks like JSON is accepted as JSON
/// even under a generic type, since some mirrors label everything `text/plain`.
pub(crate) fn parse(base: &str, mime: &str, body: &str) -> Result<Vec<IndexFile>, HubError> {
    if mime.contains("json") || body.trim_start().starts_with('{') {
        parse_json(base, body)
    } else {
        Ok(parse_html(base, body))
    }
}

#[derive(Deserialize)]
struct JsonPage {
    files: Vec<JsonFile>,
}

#[derive(Deserialize)]
struct JsonFile {
    filename: String,
    url: String,
    #[serde(default)]
    hashes: HashMap<String, String>,
    size: Option<u64>,
}

fn parse_json(base: &str, body: &str) -> Result<Vec<IndexFile>, HubError> {
    let page: JsonPage =
        serde_json::from_str(body).map_err(|e| HubError::BadIndex { url: base.to_owned(), reason: e.to_string() })?;
    Ok(page
        .files
        .into_iter()
        .map(|f| IndexFile {
            url: resolve(base, &f.url),
            sha256: f.hashes.get("sha256").map(|h| h.to_ascii_lowercase()),
            filename: f.filename,
            size: f.size,
        })
        .collect())
}

/// PEP 503 pages are machine-generated and flat, so scanning for `<a ...>`
/// tags is enough; a full HTML parser would be a heavy dependency for this.
fn parse_html(base: &str, body: &str) -> Vec<IndexFile> {
    let lower = body.to_ascii_lowercase();
    let mut files = Vec::new();
    let mut pos = 0;
    while let Some(start) = find_anchor(&lower, pos) {
        let Some(tag_end) = lower[start..].find('>').map(|i| start + i) else {
            break;
        };
        let text_end = lower[tag_end..].find("</a").map_or(body.len(), |i| tag_end + i);
        pos = text_end;
        let Some(href) = attr(&body[start..tag_end], "href") else {
            continue;
        };
        let href = unescape(&href);
        let (link, fragment) = href.split_once('#').unwrap_or((&href, ""));
        let sha256 = fragment.strip_prefix("sha256=").map(|h| h.to_ascii_lowercase());
        let url = resolve(base, link);
        let text = unescape(body[tag_end + 1..text_end].trim());
        // The anchor text is the filename by spec; fall back to the URL's last segment.
        let filename = if text.is_empty() { url.rsplit('/').next().unwrap_or_default().to_owned() } else { text };
        files.push(IndexFile { filename, url, sha256, size: None });
    }
    files
}

/// Next `<a` that is a whole tag name (not `<abbr`, `<area`).
fn find_anchor(lower: &str, mut from: usize) -> Option<usize> {
    while let Some(i) = lower[from..].find("<a") {
        let at = from + i;
        match lower.as_bytes().get(at + 2) {
            Some(c) if c.is_ascii_whitespace() => return Some(at),
            _ => from = at + 2,
        }
    }
    None
}

/// Value of attribute `name` inside one tag, quoted with `"`, `'` or not at all.
fn attr(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(name) {
        let at = from + i;
        from = at + name.len();
        // Must be a standalone attribute name (so `data-href` does not match `href`).
        let before_ok = lower[..at].ends_with(|c: char| c.is_ascii_whitespace());
        let rest = lower[from..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let value_start = tag.len() - rest.len() + 1;
        let value = tag[value_start..].trim_start();
        return Some(match value.chars().next() {
            Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or("").to_owned(),
            _ => value.split(|c: char| c.is_ascii_whitespace() || c == '>').next().unwrap_or("").to_owned(),
        });
    }
    None
}

/// The few entities that appear in index pages (URLs with `&amp;`, names).
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

/// RFC 3986 reference resolution, enough for what indexes emit: absolute URLs,
/// scheme-relative `//host/..`, absolute paths and `../` relative paths.
pub(crate) fn resolve(base: &str, reference: &str) -> String {
    if reference.contains("://") {
        return reference.to_owned();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
    if let Some(r) = reference.strip_prefix("//") {
        return format!("{scheme}://{r}");
    }
    let authority = rest.split('/').next().unwrap_or(rest);
    let origin = format!("{scheme}://{authority}");
    // The base's path without query/fragment.
    let base_path = rest[authority.len()..].split(['?', '#']).next().unwrap_or("");
    let (ref_path, suffix) = match reference.find(['?', '#']) {
        Some(i) => reference.split_at(i),
        None => (reference, ""),
    };
    let merged = if ref_path.starts_with('/') {
        ref_path.to_owned()
    } else if ref_path.is_empty() {
        base_path.to_owned()
    } else {
        let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
        format!("{}{ref_path}", if dir.is_empty() { "/" } else { dir })
    };
    format!("{origin}{}{suffix}", remove_dot_segments(&merged))
}

fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// The wheel of exactly `package==version`. Wheel names are
/// `{dist}-{version}(-{build})?-{py}-{abi}-{platform}.whl` with `dist` using `_`;
/// a pure-Python wheel is preferred if several builds exist.
pub(crate) fn pick_wheel<'a>(files: &'a [IndexFile], package: &str, version: &str) -> Option<&'a IndexFile> {
    let want = normalize(package);
    let matches = files.iter().filter(|f| {
        let Some(stem) = f.filename.strip_suffix(".whl") else {
            return false;
        };
        let mut parts = stem.split('-');
        parts.next().map(normalize).as_deref() == Some(want.as_str()) && parts.next() == Some(version)
    });
    let mut best = None;
    for f in matches {
        if f.filename.ends_with("-none-any.whl") {
            return Some(f);
        }
        best.get_or_insert(f);
    }
    best
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
