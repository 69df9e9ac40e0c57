//! Just enough HTML and URL handling for the scripted agent: the forms of a page (action,
//! method, hidden inputs, named buttons), relative URL resolution, query strings.

use std::fmt::Write as _;

/// One `<form>` of a page: its attributes and the fields a submit would send by default
/// (every `<input>` with a name and a value, except unchecked checkboxes and radios, and
/// `<button>`s are listed apart since only the clicked one is sent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Form {
    pub id: Option<String>,
    /// As written (maybe relative); resolve it against the page's URL with [`resolve`].
    pub action: String,
    /// Upper case; `GET` when absent.
    pub method: String,
    /// Inputs in document order: `(name, value)` (text inputs with their `value=`, maybe empty).
    pub fields: Vec<(String, String)>,
    /// Names of the inputs by type, e.g. `("password", "password")`.
    pub input_types: Vec<(String, String)>,
    /// Submit buttons with a name: `(name, value)`.
    pub buttons: Vec<(String, String)>,
}

impl Form {
    /// The value of field `name`, if the form has it.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn has_input(&self, name: &str) -> bool {
        self.input_types.iter().any(|(n, _)| n == name)
    }

    /// Sets (or adds) field `name`.
    pub fn set(&mut self, name: &str, value: &str) -> &mut Self {
        if let Some(f) = self.fields.iter_mut().find(|(n, _)| n == name) {
            value.clone_into(&mut f.1);
        } else {
            self.fields.push((name.to_owned(), value.to_owned()));
        }
        self
    }
}

/// The forms of `page`, in document order. Inputs and buttons outside any form but naming one
/// with `form="id"` count for that form (the provider's logout page does that).
pub fn forms(page: &str) -> Vec<Form> {
    let lower = page.to_ascii_lowercase();
    let mut out: Vec<Form> = Vec::new();
    let mut open: Option<usize> = None;
    let mut i = 0;
    while let Some(lt) = lower[i..].find('<').map(|p| p + i) {
        let rest = &lower[lt + 1..];
        let name_end = rest.find(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/').unwrap_or(rest.len());
        let tag = &rest[..name_end];
        let close = tag_end(page, lt);
        let raw = &page[lt + 1..close.saturating_sub(1).max(lt + 1)];
        i = close.max(lt + 1);
        match tag {
            "form" => {
                let a = attributes(raw);
                out.push(Form {
                    id: attr(&a, "id"),
                    action: attr(&a, "action").unwrap_or_default(),
                    method: attr(&a, "method").unwrap_or_else(|| "get".into()).to_ascii_uppercase(),
                    ..Form::default()
                });
                open = Some(out.len() - 1);
            }
            "/form" => open = None,
            "input" | "button" => {
                let a = attributes(raw);
                let target = match attr(&a, "form") {
                    Some(id) => out.iter().position(|f| f.id.as_deref() == Some(id.as_str())),
                    None => open,
                };
                let (Some(target), Some(name)) = (target, attr(&a, "name")) else { continue };
                let form = &mut out[target];
                let value = attr(&a, "value").unwrap_or_default();
                let kind = attr(&a, "type").unwrap_or_else(|| if tag == "button" { "submit" } else { "text" }.into());
                let kind = kind.to_ascii_lowercase();
                if tag == "button" || kind == "submit" || kind == "image" {
                    form.buttons.push((name, value));
                    continue;
                }
                form.input_types.push((name.clone(), kind.clone()));
                if (kind == "checkbox" || kind == "radio") && attr(&a, "checked").is_none() {
                    continue;
                }
                form.fields.push((name, value));
            }
            "script" | "style" => {
                // Skip their text: a `<` in a script is no tag.
                let end = format!("</{tag}");
                i = lower[i..].find(&end).map_or(page.len(), |p| p + i);
            }
            _ => {}
        }
    }
    out
}

/// The index just past the `>` closing the tag that starts at `lt` (quotes respected).
fn tag_end(page: &str, lt: usize) -> usize {
    let bytes = page.as_bytes();
    let mut quote = None;
    for (k, &b) in bytes.iter().enumerate().skip(lt + 1) {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), _) if q == b => quote = None,
            (None, b'>') => return k + 1,
            _ => {}
        }
    }
    page.len()
}

/// The attributes of a tag's text (`input type="hidden" name=x value='y'`), names lower-cased,
/// values entity-decoded; a bare attribute has an empty value.
fn attributes(raw: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let s = raw.trim_end_matches('/');
    let mut chars = s.char_indices().peekable();
    // Skip the tag name.
    while chars.peek().is_some_and(|(_, c)| !c.is_ascii_whitespace()) {
        chars.next();
    }
    loop {
        while chars.peek().is_some_and(|(_, c)| c.is_ascii_whitespace() || *c == '/') {
            chars.next();
        }
        let Some(&(start, _)) = chars.peek() else { break };
        let mut end = s.len();
        while let Some(&(k, c)) = chars.peek() {
            if c == '=' || c.is_ascii_whitespace() {
                end = k;
                break;
            }
            chars.next();
        }
        let name = s[start..end].to_ascii_lowercase();
        while chars.peek().is_some_and(|(_, c)| c.is_ascii_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek().is_some_and(|(_, c)| *c == '=') {
            chars.next();
            while chars.peek().is_some_and(|(_, c)| c.is_ascii_whitespace()) {
                chars.next();
            }
            match chars.peek().map(|(_, c)| *c) {
                Some(q @ ('"' | '\'')) => {
                    chars.next();
                    for (_, c) in chars.by_ref() {
                        if c == q {
                            break;
                        }
                        value.push(c);
                    }
                }
                _ => {
                    while let Some(&(_, c)) = chars.peek() {
                        if c.is_ascii_whitespace() {
                            break;
                        }
                        value.push(c);
                        chars.next();
                    }
                }
            }
        }
        if !name.is_empty() {
            out.push((name, decode_entities(&value)));
        }
    }
    out
}

fn attr(a: &[(String, String)], name: &str) -> Option<String> {
    a.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
}

/// Decodes `&amp;`, `&lt;`, `&gt;`, `&quot;`, `&apos;`, `&#NN;` and `&#xNN;`.
pub fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.find(';').filter(|&p| p <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .map(|h| u32::from_str_radix(h, 16))
                .or_else(|| entity.strip_prefix('#').map(str::parse::<u32>))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        if let Some(c) = decoded {
            out.push(c);
            rest = &rest[semi + 1..];
        } else {
            out.push('&');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// `application/x-www-form-urlencoded` of `fields` (also right for a query string).
pub fn form_encode<K: AsRef<str>, V: AsRef<str>>(fields: &[(K, V)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode_component(k.as_ref()), encode_component(v.as_ref())))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Decodes `%XX` and (form style) `+` as space.
pub fn decode_component(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut k = 0;
    while k < bytes.len() {
        match bytes[k] {
            b'+' => out.push(b' '),
            b'%' if k + 2 < bytes.len() => match (hex(bytes[k + 1]), hex(bytes[k + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    k += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        k += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The pairs of the query string of `url` (or of a bare `a=b&c=d`), decoded.
pub fn query_pairs(url: &str) -> Vec<(String, String)> {
    let q = match url.split_once('?') {
        Some((_, q)) => q,
        None if !url.contains("://") => url,
        None => "",
    };
    let q = q.split('#').next().unwrap_or("");
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode_component(k), decode_component(v))
        })
        .collect()
}

/// The first value of query parameter `name` of `url`.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    query_pairs(url).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// `scheme://authority` of an absolute URL.
pub fn origin(url: &str) -> &str {
    let after = url.find("://").map_or(0, |p| p + 3);
    let end = url[after..].find(['/', '?', '#']).map_or(url.len(), |p| p + after);
    &url[..end]
}

/// Resolves `reference` (a Location header, a form action) against the absolute URL `base`.
pub fn resolve(base: &str, reference: &str) -> String {
    if reference.contains("://") {
        return reference.to_owned();
    }
    if let Some(rest) = reference.strip_prefix("//") {
        let scheme = base.split("://").next().unwrap_or("http");
        return format!("{scheme}://{rest}");
    }
    let origin = origin(base);
    if reference.starts_with('/') {
        return format!("{origin}{reference}");
    }
    let path_and_query = &base[origin.len()..];
    if reference.is_empty() {
        return base.split('#').next().unwrap_or(base).to_owned();
    }
    if reference.starts_with('?') {
        let path = path_and_query.split(['?', '#']).next().unwrap_or("");
        return format!("{origin}{path}{reference}");
    }
    if reference.starts_with('#') {
        return format!("{}{reference}", base.split('#').next().unwrap_or(base));
    }
    let path = path_and_query.split(['?', '#']).next().unwrap_or("");
    let dir = path.rfind('/').map_or("/", |p| &path[..=p]);
    let mut segments: Vec<&str> = Vec::new();
    let joined = format!("{dir}{reference}");
    for seg in joined.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("{origin}/{}", segments.join("/"))
}
