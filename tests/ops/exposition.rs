//! The metrics listener from outside: a plain-TCP HTTP/1.1 client, a
//! reader of Prometheus text (0.0.4) samples, scrapes that wait for the
//! figures to move, and Python's prometheus_client as the independent
//! parser.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use kit::{WAIT, peers};

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let found = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name));
        found.map(|(_, v)| v.as_str())
    }
}

/// Sends `request` as is on a new connection and reads the response until
/// the server closes the connection (every wait bounded by WAIT).
pub fn http_raw(addr: &str, request: &[u8]) -> std::io::Result<HttpResponse> {
    let addr: SocketAddr = addr.parse().expect("a socket address");
    let mut tcp = TcpStream::connect_timeout(&addr, WAIT)?;
    tcp.set_read_timeout(Some(WAIT))?;
    tcp.set_write_timeout(Some(WAIT))?;
    tcp.write_all(request)?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)?;
    parse_http_response(raw)
}

pub fn parse_http_response(raw: Vec<u8>) -> std::io::Result<HttpResponse> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of the response head"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let mut status_line = lines.next().unwrap_or("").splitn(3, ' ');
    if !status_line.next().unwrap_or("").starts_with("HTTP/1.") {
        return Err(bad("not an HTTP/1.x status line"));
    }
    let status = status_line.next().and_then(|s| s.parse().ok());
    let status = status.ok_or_else(|| bad("no status code"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| bad("header without colon"))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let body = String::from_utf8_lossy(&raw[end + 4..]).into_owned();
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// `GET path` (HTTP/1.1, Host, Connection: close).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<HttpResponse> {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    http_raw(addr, request.as_bytes())
}

/// One sample line of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A scraped exposition: the text and its samples.
#[derive(Debug, Clone)]
pub struct Exposition {
    pub text: String,
    pub samples: Vec<MetricSample>,
}

impl Exposition {
    /// A small reader of the sample lines (the independent parser is
    /// [`prometheus_parse`]); panics on a line it cannot read.
    pub fn parse(text: &str) -> Exposition {
        let samples = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                parse_sample(line).unwrap_or_else(|| panic!("unreadable sample line {line:?}"))
            })
            .collect();
        Exposition {
            text: text.to_owned(),
            samples,
        }
    }

    /// The sample `name` with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found = self
            .samples
            .iter()
            .find(|s| s.name == name && s.labels == want);
        found.map(|s| s.value)
    }

    /// The sample, or 0 when it is absent (labelled counters appear with
    /// their first increment).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The sum of the samples `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let has = |s: &MetricSample, (k, v): &(&str, &str)| {
            s.labels.get(*k).map(String::as_str) == Some(*v)
        };
        let matching = self
            .samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|l| has(s, l)));
        matching.map(|s| s.value).sum()
    }
}

fn parse_sample(line: &str) -> Option<MetricSample> {
    let name_end = line.find(['{', ' '])?;
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = inner.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.to_owned(), value);
            inner = &after[end + 1..];
            inner = inner.strip_prefix(',').unwrap_or(inner);
        }
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(MetricSample {
        name: line[..name_end].to_owned(),
        labels,
        value,
    })
}

/// GET /metrics, checked (200, the 0.0.4 content type, a body whose length
/// is the declared content-length), parsed.
pub fn scrape(addr: &str) -> Exposition {
    let response = http_get(addr, "/metrics").unwrap_or_else(|e| panic!("scraping {addr}: {e}"));
    assert_eq!(response.status, 200, "{response:?}");
    let content_type = response.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "content-type {content_type:?}"
    );
    let length = response
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    assert_eq!(
        length,
        Some(response.body.len()),
        "content-length matches the body"
    );
    Exposition::parse(&response.body)
}

/// Polls GET /metrics until `want` holds (up to WAIT); that scrape.
pub fn scrape_until(addr: &str, what: &str, want: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + WAIT;
    loop {
        let exposition = scrape(addr);
        if want(&exposition) {
            return exposition;
        }
        if Instant::now() >= deadline {
            panic!(
                "metrics never showed {what} within {WAIT:?}; last scrape:\n{}",
                exposition.text
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What prometheus_client made of an exposition.
#[derive(Debug, Clone)]
pub struct ParsedFamily {
    pub name: String,
    pub kind: String,
    pub help: String,
    pub samples: usize,
}

const PARSE_SCRIPT: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
text = sys.stdin.read()
total = 0
for family in text_string_to_metric_families(text):
    total += len(family.samples)
    help = family.documentation.replace("\t", " ").replace("\n", " ")
    print("FAMILY\t%s\t%s\t%d\t%s" % (family.name, family.type, len(family.samples), help))
print("SAMPLES\t%d" % total)
"#;

/// The Python peer that can parse expositions (see [`peers::python`] for
/// when it is missing).
pub fn prometheus_python() -> Option<peers::Peer> {
    peers::python_with("prometheus_client.parser")
}

/// Parses `text` with prometheus_client's `text_string_to_metric_families`;
/// Err with Python's complaint when it does not parse.
pub fn prometheus_parse(
    python: &peers::Peer,
    text: &str,
) -> Result<(Vec<ParsedFamily>, usize), String> {
    let (status, stdout, stderr) = python.run_args(&["-c", PARSE_SCRIPT], Some(text));
    if !status.success() {
        return Err(stderr);
    }
    let mut families = Vec::new();
    let mut total = None;
    for line in stdout.lines() {
        match line.split('\t').collect::<Vec<_>>().as_slice() {
            ["FAMILY", name, kind, samples, help] => families.push(ParsedFamily {
                name: name.to_string(),
                kind: kind.to_string(),
                samples: samples.parse().expect("a count"),
                help: help.to_string(),
            }),
            ["SAMPLES", n] => total = n.parse().ok(),
            _ => return Err(format!("unexpected output from the parse script: {line:?}")),
        }
    }
    Ok((families, total.ok_or("no SAMPLES line")?))
}
