//! The web view's page, embedded in the binary: no internet at run time,
//! nothing from a CDN. The chart library is TradingView's
//! lightweight-charts (Apache-2.0), vendored by
//! `scripts/vendor-web-assets.sh` into `worker/web/vendor/` with its
//! licence.
//!
//! Every answer carries a Content-Security-Policy that allows this origin
//! only (no inline script or style, no other host, no frames, no forms),
//! so even a value that slipped past the page's escaping could not run.

/// The page's files: path, content type, body.
const FILES: [(&str, &str, &[u8]); 5] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../../../web/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../web/app.js"),
    ),
    (
        "/app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../web/app.css"),
    ),
    (
        "/vendor/lightweight-charts.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../web/vendor/lightweight-charts.standalone.production.js"),
    ),
    (
        "/vendor/LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../../../web/vendor/LICENSE"),
    ),
];

/// Self only: scripts, styles, images (and `data:` images, which the
/// chart library does not need but the browser's own icons may), the event
/// stream.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// An embedded file: content type and body.
pub fn file(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = if path == "/index.html" { "/" } else { path };
    FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, ctype, body)| (*ctype, *body))
}

/// The headers of every web view answer.
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-cache"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_embedded_files() {
        let (ctype, page) = file("/").unwrap();
        assert!(ctype.starts_with("text/html"));
        let page = std::str::from_utf8(page).unwrap();
        for src in ["/app.js", "/app.css", "/vendor/lightweight-charts.js"] {
            assert!(page.contains(src), "{src}");
            assert!(file(src).is_some(), "{src}");
        }
        assert!(!page.contains("http://") && !page.contains("https://cdn"));
        assert!(
            !page.contains("<script>"),
            "inline script would break the CSP"
        );
        assert!(file("/../Cargo.toml").is_none());
    }

    #[test]
    fn the_script_never_writes_markup() {
        let js = std::str::from_utf8(file("/app.js").unwrap().1).unwrap();
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!js.contains(sink), "app.js uses {sink}");
        }
    }
}
