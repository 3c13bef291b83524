//! The review page: one HTML file, its stylesheet and its script, embedded
//! in the binary and served on `GET /` and `GET /s/<session>` by the web
//! front end (see [`crate::grpc::web`]). No build step and no CDN: the
//! script is the hand-written gRPC-Web participant in `app.js`.
//!
//! The page talks to its own origin only, and says so to the browser: every
//! asset goes out with a Content-Security-Policy that allows scripts,
//! styles and connections to `'self'` and nothing else.

use bytes::Bytes;

use crate::grpc::web::Asset;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// Sent with every asset: nothing loads or connects anywhere but here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const HEADERS: &[(&str, &str)] = &[
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
];

/// The page's total size in bytes (HTML, CSS and JS).
pub const PAGE_BYTES: usize = INDEX.len() + SCRIPT.len() + STYLE.len();

// The page stays small: a build with a larger one fails.
const _: () = assert!(
    PAGE_BYTES <= 60 * 1024,
    "the page (HTML, CSS and JS) is over 60 KiB"
);

/// The asset at `path`, if any.
pub fn asset(path: &str) -> Option<Asset> {
    let (content_type, body) = match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", INDEX),
        "/app.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "/app.css" => ("text/css; charset=utf-8", STYLE),
        p if p.starts_with("/s/") && p.len() > 3 => ("text/html; charset=utf-8", INDEX),
        _ => return None,
    };
    Some(Asset {
        content_type,
        body: Bytes::from_static(body.as_bytes()),
        headers: HEADERS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(asset("/").unwrap().content_type.starts_with("text/html"));
        assert!(
            asset("/s/demo")
                .unwrap()
                .content_type
                .starts_with("text/html")
        );
        assert!(asset("/app.js").is_some());
        assert!(asset("/s/").is_none());
        assert!(asset("/nothing").is_none());
        assert!(asset("/../Cargo.toml").is_none());
    }

    #[test]
    fn the_page_loads_only_its_own_files() {
        for text in [INDEX, SCRIPT, STYLE] {
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("//cdn"));
        }
        assert!(INDEX.contains("src=\"/app.js\"") && INDEX.contains("href=\"/app.css\""));
    }
}
