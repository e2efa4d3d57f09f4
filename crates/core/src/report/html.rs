//! Static HTML pages: escaping, one shared page skeleton with inline CSS, and page-number
//! navigation. Every link is relative, so a report folder can be moved or zipped whole.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(ch),
        }
    }
    out
}

/// A relative URL for a file name or path: each segment percent-encoded where needed.
pub fn href(path: &str) -> String {
    let mut out = String::new();
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}\
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}\
nav{margin:.8em 0}nav a,nav span{margin-right:.5em}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left;font-size:.9em}\
.item{border-top:1px solid #ddd;padding:.6em 0;display:flex;flex-wrap:wrap;gap:.6em;align-items:flex-start}\
.item .what{min-width:14em;max-width:22em;font-size:.9em}\
figure{margin:0;width:min-content}figcaption{font-size:.75em;word-break:break-all}\
img{image-rendering:pixelated;border:1px solid #ccc}\
.hard{color:#c81e1e}.semihard{color:#d78200}.easy{color:#1e8c3c}.muted{color:#777}";

/// A whole page: `nav` goes above and below the body.
pub fn page(title: &str, nav: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{t}</title><style>{STYLE}</style></head>\n<body>\n<h1>{t}</h1>\n{nav}\n{body}\n{nav}\n</body></html>\n",
        t = escape(title)
    )
}

/// Links to the pages `name(1)..=name(total)` around `current` (1-based), plus `up` first.
pub fn pager(
    current: usize,
    total: usize,
    name: impl Fn(usize) -> String,
    up: (&str, &str),
) -> String {
    let mut out = format!("<nav><a href=\"{}\">{}</a>", href(up.0), escape(up.1));
    if total > 1 {
        let link = |n: usize, text: &str| format!("<a href=\"{}\">{text}</a>", href(&name(n)));
        if current > 1 {
            out += &link(current - 1, "&laquo; previous");
        }
        for n in 1..=total {
            // Long listings show the first, the last and the pages near the current one.
            let near = n == 1 || n == total || n.abs_diff(current) <= 3;
            if n == current {
                let _ = write!(out, "<span><b>{n}</b></span>");
            } else if near {
                out += &link(n, &n.to_string());
            } else if n.abs_diff(current) == 4 {
                out += "<span>&hellip;</span>";
            }
        }
        if current < total {
            out += &link(current + 1, "next &raquo;");
        }
    }
    out + "</nav>"
}

/// A thumbnail with its caption lines.
pub fn figure(src: &str, size: u32, alt: &str, caption: &[String]) -> String {
    format!(
        "<figure><img src=\"{}\" width=\"{size}\" height=\"{size}\" alt=\"{}\" loading=\"lazy\"><figcaption>{}</figcaption></figure>",
        href(src),
        escape(alt),
        caption.iter().map(|c| escape(c)).collect::<Vec<_>>().join("<br>")
    )
}

/// A table from a header (none when empty) and rows of cell text (escaped here).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table>");
    if !header.is_empty() {
        out += "<tr>";
        for h in header {
            let _ = write!(out, "<th>{}</th>", escape(h));
        }
        out += "</tr>";
    }
    for row in rows {
        out += "<tr>";
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(cell));
        }
        out += "</tr>";
    }
    out + "</table>"
}

/// "hard 3, semihard 5, easy 0", each kind in its colour.
pub fn kind_counts(
    counts: &std::collections::BTreeMap<crate::definitions::TripletKind, usize>,
) -> String {
    crate::definitions::TripletKind::ALL
        .iter()
        .map(|k| {
            format!(
                "<span class=\"{0}\">{0}</span> {1}",
                k.name(),
                counts.get(k).unwrap_or(&0)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn write(path: &Path, html: &str) -> std::io::Result<()> {
    crate::output::write_atomic(path, |w| w.write_all(html.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_links_are_escaped() {
        assert_eq!(escape("<a & 'b'>"), "&lt;a &amp; &#39;b&#39;&gt;");
        assert_eq!(href("cats/my cat#1.png"), "cats/my%20cat%231.png");
    }

    #[test]
    fn the_pager_links_neighbours_and_ends() {
        let nav = pager(5, 20, |n| format!("p-{n:03}.html"), ("index.html", "index"));
        for page in ["p-004.html", "p-001.html", "p-020.html", "p-008.html"] {
            assert!(nav.contains(page), "{page} in {nav}");
        }
        assert!(!nav.contains("p-012.html"));
        assert!(!nav.contains("p-005.html"), "no link to itself");
    }
}
